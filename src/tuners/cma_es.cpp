// CMA-ES after Hansen's tutorial (arXiv:1604.00772), Table 1 defaults and Fig. 6 pseudocode.
#include "tuners/cma_es.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "peft/error.h"

namespace peft {

CmaResult cma_es_minimize(const std::function<double(const std::vector<double>&)>& f, const std::vector<double>& x0,
                          const CmaOptions& o) {
  const int64_t n = static_cast<int64_t>(x0.size());
  PEFT_CHECK(n > 0, "CMA-ES: no dimensions");
  PEFT_CHECK(o.budget >= 1 && o.sigma0 > 0 && o.lower < o.upper, "CMA-ES: budget >= 1, sigma0 > 0, lower < upper");
  const auto opt = torch::dtype(torch::kFloat64);
  const int64_t lambda = o.population > 0 ? o.population : 4 + static_cast<int64_t>(std::floor(3 * std::log(double(n))));
  const int64_t mu = lambda / 2;
  std::vector<double> w(mu);
  for (int64_t i = 0; i < mu; ++i) w[i] = std::log(mu + 0.5) - std::log(double(i + 1));
  const double wsum = std::accumulate(w.begin(), w.end(), 0.0);
  for (auto& v : w) v /= wsum;
  double w2 = 0;
  for (auto v : w) w2 += v * v;
  const double mueff = 1 / w2;
  const double cs = (mueff + 2) / (n + mueff + 5);
  const double ds = 1 + 2 * std::max(0.0, std::sqrt((mueff - 1) / (n + 1)) - 1) + cs;
  const double cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n);
  const double c1 = 2 / ((n + 1.3) * (n + 1.3) + mueff);
  const double cmu = std::min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) * (n + 2) + mueff));
  const double chi = std::sqrt(double(n)) * (1 - 1.0 / (4 * n) + 1.0 / (21.0 * n * n));  // E||N(0, I)||

  auto clip = [&](torch::Tensor x) { return x.clamp(o.lower, o.upper); };
  auto to_vec = [](const torch::Tensor& t) {
    auto c = t.contiguous();
    return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
  };
  CmaResult res;
  auto eval = [&](const torch::Tensor& x) {
    auto v = to_vec(x);
    double fx = f(v);
    PEFT_CHECK(std::isfinite(fx), "CMA-ES: the objective is not finite (", fx, ") at a candidate");
    ++res.evaluations;
    if (res.best_x.empty() || fx < res.best_f) {
      res.best_f = fx;
      res.best_x = v;
    }
    res.best_so_far.push_back(res.best_f);
    return fx;
  };

  auto m = clip(torch::tensor(x0, opt));
  eval(m);
  double sigma = o.sigma0;
  auto C = torch::eye(n, opt), B = torch::eye(n, opt), D = torch::ones({n}, opt), invsqrtC = torch::eye(n, opt);
  auto ps = torch::zeros({n}, opt), pc = torch::zeros({n}, opt);
  std::mt19937_64 rng(o.seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const auto wt = torch::tensor(w, opt);
  for (int64_t g = 0; res.evaluations < o.budget; ++g) {
    const int64_t k = std::min(lambda, o.budget - res.evaluations);
    if (k < 2) break;  // too few left for a generation's ranking
    auto X = torch::empty({k, n}, opt), F = torch::empty({k}, opt);
    for (int64_t i = 0; i < k; ++i) {
      std::vector<double> z(n);
      for (auto& v : z) v = normal(rng);
      auto y = B.matmul(D * torch::tensor(z, opt));
      X[i] = clip(m + sigma * y);  // box constraint by clipping (the step used is the clipped one)
      F[i] = eval(X[i]);
    }
    const int64_t mk = std::min(mu, k);
    auto order = F.argsort().slice(0, 0, mk);
    auto wk = wt.slice(0, 0, mk) / wt.slice(0, 0, mk).sum();
    auto Y = (X.index_select(0, order) - m) / sigma;  // [mk, n]
    auto yw = (wk.unsqueeze(1) * Y).sum(0);
    m = clip(m + sigma * yw);
    ps = (1 - cs) * ps + std::sqrt(cs * (2 - cs) * mueff) * invsqrtC.matmul(yw);
    const double psn = ps.norm().item<double>();
    const bool hs = psn / std::sqrt(1 - std::pow(1 - cs, 2.0 * (g + 1))) < (1.4 + 2.0 / (n + 1)) * chi;
    pc = (1 - cc) * pc + (hs ? std::sqrt(cc * (2 - cc) * mueff) : 0.0) * yw;
    auto rank_mu = Y.t().matmul(wk.unsqueeze(1) * Y);
    C = (1 - c1 - cmu) * C + c1 * (torch::outer(pc, pc) + (hs ? 0.0 : cc * (2 - cc)) * C) + cmu * rank_mu;
    sigma *= std::exp((cs / ds) * (psn / chi - 1));
    C = (C + C.t()) / 2;  // keep it symmetric against rounding
    auto eig = torch::linalg_eigh(C);
    D = std::get<0>(eig).clamp_min(1e-20).sqrt();
    B = std::get<1>(eig);
    invsqrtC = B.matmul(torch::diag(1 / D)).matmul(B.t());
  }
  return res;
}

}  // namespace peft
