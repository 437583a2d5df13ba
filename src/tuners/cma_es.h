// CMA-ES (Hansen 2016, "The CMA Evolution Strategy: A Tutorial", arXiv:1604.00772): a seeded,
// derivative-free minimiser for small dimensions, with box bounds. LoRAHub's weight search uses it.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

namespace peft {

struct CmaOptions {
  double sigma0 = 0.5;          // initial step size
  double lower = -1e300, upper = 1e300;  // box bounds: candidates are clipped into them
  int64_t budget = 100;         // evaluations of f, in all
  int64_t population = 0;       // lambda; 0: 4 + floor(3 ln n) (the tutorial's default)
  uint64_t seed = 0;
};

struct CmaResult {
  std::vector<double> best_x;
  double best_f = 0;
  int64_t evaluations = 0;
  std::vector<double> best_so_far;  // best f after each evaluation
};

/// Minimises f from x0 with the tutorial's (mu/mu_w, lambda)-CMA-ES (weighted recombination,
/// cumulative step-size adaptation, rank-one and rank-mu covariance updates). x0 itself is
/// evaluated first. Deterministic for a seed (std::mt19937_64).
CmaResult cma_es_minimize(const std::function<double(const std::vector<double>&)>& f, const std::vector<double>& x0,
                          const CmaOptions& opts);

}  // namespace peft
