// LoRAHub (Huang et al. 2023, "LoraHub: Efficient Cross-Task Generalization via Dynamic LoRA
// Composition"): a gradient-free search for the weights w of N LoRA modules on a few examples of
// a new task. The composed module is A = sum_i w_i A_i, B = sum_i w_i B_i (the paper's eq. 1:
// every factor weighted), scored by loss(w) + l1 * sum_i |w_i| (sec. 3.2's regulariser), and
// minimised with CMA-ES (src/tuners/cma_es.h; the paper uses a derivative-free optimiser from
// Nevergrad) from w = 0 within [-bound, bound].
//
//   pm->load_adapter("a", "a");  pm->load_adapter("b", "b");
//   auto r = peft::lorahub_search(*pm, {"a", "b"}, "hub", [&] { return loss_on_examples(*pm); });
//   pm->save_adapter("out/hub", "hub");   // a plain LoRA adapter with the best weights
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace peft {

class PeftModel;

struct LoraHubOptions {
  int64_t budget = 40;  // loss evaluations (the paper's default number of inference steps)
  double l1 = 0.05;     // weight of sum |w_i|
  double bound = 1.5;   // w_i in [-bound, bound]
  double sigma0 = 0.5;  // CMA-ES initial step size
  uint64_t seed = 0;
};

struct LoraHubResult {
  std::vector<double> weights;       // the best w found
  double loss = 0, objective = 0;    // at the best w: loss, loss + l1 * |w|_1
  int64_t evaluations = 0;
  std::vector<double> best_objective;  // best objective after each evaluation
};

/// Adds LoRA adapter `name` (the structure of adapters[0]) to `pm`, searches w and leaves the
/// best composition in it. `loss` evaluates the model as it is (the caller's examples); during
/// the search `name` is the only active adapter; afterwards the active adapters are restored.
/// Refused before anything changes: fewer than one adapter, a non-LoRA adapter, DoRA or gates,
/// different ranks, scalings or target modules.
LoraHubResult lorahub_search(PeftModel& pm, const std::vector<std::string>& adapters, const std::string& name,
                             const std::function<double()>& loss, const LoraHubOptions& opts = {});

/// The composition at fixed weights (no search): sets `name`'s factors to sum_i w_i A_i,
/// sum_i w_i B_i. `name` must have been made by lorahub_search or have the same structure.
void lorahub_compose(PeftModel& pm, const std::vector<std::string>& adapters, const std::vector<double>& weights,
                     const std::string& name);

}  // namespace peft
