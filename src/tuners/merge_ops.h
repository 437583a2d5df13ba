// Merging of task tensors (the tensors of several adapters for one module), the operations of
// Python peft 0.13.2's peft/utils/merge_utils.py, written from their definitions:
//   task arithmetic (Ilharco et al. 2023):  sum_i c_i X_i
//   magnitude pruning:                      keep the k = int(density * numel) largest |X_i| (topk)
//   TIES-merging (Yadav et al. 2023, sec. 3): trim (magnitude), elect the sign per entry on the
//     trimmed unweighted tensors ("total": sign of the sum; "frequency": sign of the sum of
//     signs; >= 0 counts as +), disjoint mean of the weighted entries that agree with it
//   DARE (Yu et al. 2024, eq. 2): X * M, M ~ Bernoulli(density) drawn by torch.bernoulli; the
//     paper rescales by 1/density, peft 0.13.2 does not (rescale is an option here).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace peft::merge_ops {

struct Spec {
  std::string kind;  // "linear" | "ties" | "dare_linear" | "dare_ties" | "magnitude_prune"
  double density = 1.0;
  std::string sign_method = "total";
  bool dare_rescale = false;
};

/// Called with (index of the task tensor, its 0/1 float mask) for every DARE mask drawn.
using MaskHook = std::function<void(size_t, const torch::Tensor&)>;

/// Merges `tensors` (same shape) with `weights` (float32 [n]); DARE masks come from LibTorch's
/// default CPU generator, one per tensor in order, each drawn over the tensor in row-major order.
torch::Tensor merge(const std::vector<torch::Tensor>& tensors, const torch::Tensor& weights, const Spec& spec,
                    const MaskHook& on_mask = nullptr);

}  // namespace peft::merge_ops
