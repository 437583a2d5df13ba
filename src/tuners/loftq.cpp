// LoftQ initialisation (tuners/loftq.h; Li et al. 2023, arXiv:2310.08659, Algorithm 1).
#include "tuners/loftq.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "peft/error.h"
#include "peft/quant.h"

namespace peft {
namespace {

// The normal distribution's quantile function in float64 (scipy.stats.norm.ppf).
torch::Tensor norm_ppf(const torch::Tensor& p) {
  return std::sqrt(2.0) * torch::erfinv(2 * p.to(torch::kFloat64) - 1);
}

}  // namespace

torch::Tensor normal_float_map(int64_t bits) {
  PEFT_CHECK(bits >= 1 && bits <= 8, "LoftQ: the normal map needs 1..8 bits, got ", bits);
  const double offset = 0.9677083;
  const int64_t n = int64_t(1) << bits;
  // The probabilities are a float32 linspace (torch's default dtype), their quantiles float64,
  // the list then float32 again: peft's create_normal_map step by step.
  auto pos = norm_ppf(torch::linspace(offset, 0.5, n / 2 + 1, torch::kFloat32).slice(0, 0, n / 2));
  auto neg = -norm_ppf(torch::linspace(offset, 0.5, n / 2, torch::kFloat32).slice(0, 0, n / 2 - 1));
  auto v = torch::cat({pos, torch::zeros({1}, torch::kFloat64), neg}).to(torch::kFloat32);
  v = std::get<0>(v.sort());
  return v / v.max();
}

torch::Tensor normal_float_round_trip(const torch::Tensor& W, int64_t bits, int64_t blocksize) {
  torch::NoGradGuard ng;
  auto w = W.detach().to(torch::kFloat32).contiguous();
  PEFT_CHECK(w.numel() % blocksize == 0, "LoftQ: a weight of shape ", W.sizes(), " (", w.numel(),
             " values) is not divisible into blocks of ", blocksize, " (peft's NFQuantizer refuses it too)");
  auto table = normal_float_map(bits);
  auto blocks = w.view({-1, blocksize});
  auto mx = blocks.abs().amax({1}, /*keepdim=*/true);
  // An all-zero block (0 / 0 in peft) maps to the table's 0 entry.
  auto x = torch::where(mx > 0, blocks / mx, torch::zeros_like(blocks));
  // Nearest entry as peft's argmin over |x - table| (ties to the lower index), in chunks so that
  // the [rows, blocksize, 2^bits] difference stays small.
  auto idx = torch::empty(x.sizes(), torch::kLong);
  const int64_t rows = x.size(0);
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 22) / (blocksize * table.numel()));
  for (int64_t r = 0; r < rows; r += chunk) {
    auto xs = x.slice(0, r, std::min(rows, r + chunk));
    idx.slice(0, r, std::min(rows, r + chunk)).copy_((xs.unsqueeze(-1) - table.view({1, 1, -1})).abs().argmin(-1));
  }
  return (table.index({idx}) * mx).view(W.sizes());
}

LoftQResult loftq_decompose(const torch::Tensor& W, int64_t bits, int64_t rank, int64_t iters, bool factors) {
  PEFT_CHECK(bits == 2 || bits == 4 || bits == 8, "LoftQ: loftq_bits must be 2, 4 or 8, got ", bits);
  PEFT_CHECK(iters >= 1, "LoftQ: loftq_iter must be >= 1, got ", iters);
  PEFT_CHECK(W.dim() == 2, "LoftQ: the weight must be a matrix, got shape ", W.sizes());
  PEFT_CHECK(rank >= 1 && rank <= std::min(W.size(0), W.size(1)), "LoftQ: r = ", rank,
             " exceeds min(out, in) = ", std::min(W.size(0), W.size(1)));
  torch::NoGradGuard ng;
  const auto w = W.detach().to(torch::kFloat32).contiguous();
  LoftQResult out;
  torch::Tensor res = w;
  for (int64_t t = 0; t < iters; ++t) {
    // Q_t = quantize(W - B_{t-1} A_{t-1}); the first residual is W itself.
    out.base = bits == 4 ? quant::dequantize_4bit(quant::quantize_4bit(res, quant::QuantType::NF4, 64, false))
                         : normal_float_round_trip(res, bits);
    if (t == iters - 1 && !factors) break;
    // B_t A_t = SVD_r(W - dequant(Q_t)), the square roots of the singular values on both sides.
    auto svd = torch::linalg_svd(w - out.base, /*full_matrices=*/false);
    auto sq = std::get<1>(svd).slice(0, 0, rank).sqrt();
    out.B = std::get<0>(svd).slice(1, 0, rank) * sq.unsqueeze(0);
    out.A = sq.unsqueeze(1) * std::get<2>(svd).slice(0, 0, rank);
    res = w - out.B.matmul(out.A);
  }
  return out;
}

bool init_rewrites_base(const nlohmann::json& c) {
  if (!c.is_object() || c.value("peft_type", std::string()) != "LORA") return false;
  auto it = c.find("init_lora_weights");
  return it != c.end() && it->is_string() && *it == "loftq";
}

}  // namespace peft
