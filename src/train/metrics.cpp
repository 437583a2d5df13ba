// Classification and regression metrics (sklearn / scipy definitions) and perplexity.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "peft/error.h"
#include "peft/metrics.h"

namespace peft {

namespace {
template <class T>
void check_sizes(const char* what, const std::vector<T>& a, const std::vector<T>& b) {
  PEFT_CHECK(a.size() == b.size(), what, ": ", a.size(), " predictions but ", b.size(), " labels");
  PEFT_CHECK(!a.empty(), what, ": no examples");
}

std::vector<double> average_ranks(const std::vector<double>& x) {
  std::vector<size_t> idx(x.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return x[a] < x[b]; });
  std::vector<double> rank(x.size());
  for (size_t i = 0; i < idx.size();) {
    size_t j = i;
    while (j + 1 < idx.size() && x[idx[j + 1]] == x[idx[i]]) ++j;
    double r = (static_cast<double>(i) + static_cast<double>(j)) / 2.0 + 1.0;  // 1-based average
    for (size_t k = i; k <= j; ++k) rank[idx[k]] = r;
    i = j + 1;
  }
  return rank;
}
}  // namespace

double accuracy(const std::vector<int64_t>& pred, const std::vector<int64_t>& labels) {
  check_sizes("accuracy", pred, labels);
  size_t ok = 0;
  for (size_t i = 0; i < pred.size(); ++i) ok += pred[i] == labels[i];
  return static_cast<double>(ok) / static_cast<double>(pred.size());
}

double f1_score(const std::vector<int64_t>& pred, const std::vector<int64_t>& labels, const std::string& average,
                int64_t pos_label) {
  check_sizes("f1_score", pred, labels);
  auto f1_of = [&](int64_t c) {
    double tp = 0, fp = 0, fn = 0;
    for (size_t i = 0; i < pred.size(); ++i) {
      bool p = pred[i] == c, t = labels[i] == c;
      tp += p && t;
      fp += p && !t;
      fn += !p && t;
    }
    return 2 * tp + fp + fn > 0 ? 2 * tp / (2 * tp + fp + fn) : 0.0;
  };
  if (average == "binary") return f1_of(pos_label);
  PEFT_CHECK(average == "macro", "f1_score: unknown average '", average, "' (use macro or binary)");
  std::set<int64_t> classes(labels.begin(), labels.end());
  classes.insert(pred.begin(), pred.end());
  double sum = 0;
  for (int64_t c : classes) sum += f1_of(c);
  return sum / static_cast<double>(classes.size());
}

double matthews_corrcoef(const std::vector<int64_t>& pred, const std::vector<int64_t>& labels) {
  check_sizes("matthews_corrcoef", pred, labels);
  std::map<int64_t, double> t, p;  // per-class true / predicted counts
  double correct = 0, s = static_cast<double>(pred.size());
  for (size_t i = 0; i < pred.size(); ++i) {
    t[labels[i]] += 1;
    p[pred[i]] += 1;
    correct += pred[i] == labels[i];
  }
  double tp = 0, pp = 0, tt = 0;
  for (auto& [c, n] : t) {
    tt += n * n;
    auto it = p.find(c);
    if (it != p.end()) tp += n * it->second;
  }
  for (auto& [c, n] : p) pp += n * n;
  double denom = std::sqrt((s * s - pp) * (s * s - tt));
  return denom == 0 ? 0.0 : (correct * s - tp) / denom;
}

double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  check_sizes("pearson", x, y);
  double n = static_cast<double>(x.size());
  double mx = std::accumulate(x.begin(), x.end(), 0.0) / n, my = std::accumulate(y.begin(), y.end(), 0.0) / n;
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  if (sxx == 0 || syy == 0) return std::numeric_limits<double>::quiet_NaN();
  double r = sxy / std::sqrt(sxx * syy);
  return std::max(-1.0, std::min(1.0, r));
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  check_sizes("spearman", x, y);
  return pearson(average_ranks(x), average_ranks(y));
}

double perplexity(double mean_loss) { return std::exp(mean_loss); }

}  // namespace peft
