#include "tuners/merge_ops.h"

#include "peft/error.h"

namespace peft::merge_ops {
namespace {

torch::Tensor magnitude_prune(const torch::Tensor& t, double density) {
  if (density >= 1) return t;
  auto mask = torch::zeros_like(t).reshape({-1});
  const auto k = static_cast<int64_t>(density * static_cast<double>(t.numel()));  // Python int()
  auto top = std::get<1>(torch::topk(t.abs().reshape({-1}), k, /*dim=*/-1, /*largest=*/true));
  mask.index_put_({top}, 1.0);
  return t * mask.reshape(t.sizes());
}

torch::Tensor random_prune(const torch::Tensor& t, double density, bool rescale, size_t i, const MaskHook& hook) {
  if (density >= 1) return t;  // no pruning and no draws, as peft's prune()
  // A float tensor of probabilities: the per-element Bernoulli kernel (one 32-bit draw each).
  auto mask = torch::bernoulli(torch::full_like(t, density));
  if (hook) hook(i, mask);
  auto pruned = t * mask;
  return rescale ? pruned / density : pruned;
}

/// Weights [n] reshaped to broadcast over stacked [n, ...] tensors.
torch::Tensor broadcast_weights(const torch::Tensor& w, const torch::Tensor& stacked) {
  std::vector<int64_t> shape(stacked.dim(), 1);
  shape[0] = w.size(0);
  return w.view(shape);
}

torch::Tensor majority_sign_mask(const torch::Tensor& stacked, const std::string& method) {
  auto sign = stacked.sign();
  torch::Tensor magnitude;
  if (method == "total") magnitude = stacked.sum(0);
  else if (method == "frequency") magnitude = sign.sum(0);
  else fail("majority_sign_method must be \"total\" or \"frequency\", got '", method, "'");
  auto majority = torch::where(magnitude >= 0, torch::ones_like(magnitude), -torch::ones_like(magnitude));
  return sign == majority;  // a pruned 0 never agrees
}

torch::Tensor disjoint_merge(const torch::Tensor& weighted, const torch::Tensor& keep) {
  auto mixed = (weighted * keep).sum(0);
  auto count = keep.sum(0).to(mixed.scalar_type()).clamp_min(1.0);
  return mixed / count;
}

}  // namespace

torch::Tensor merge(const std::vector<torch::Tensor>& tensors, const torch::Tensor& weights, const Spec& s,
                    const MaskHook& on_mask) {
  PEFT_CHECK(!tensors.empty(), "merge: no tensors");
  PEFT_CHECK(weights.dim() == 1 && weights.size(0) == static_cast<int64_t>(tensors.size()), "merge: ",
             tensors.size(), " tensors but ", weights.numel(), " weights");
  std::vector<torch::Tensor> pruned;
  const bool ties = s.kind == "ties" || s.kind == "dare_ties";
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (s.kind == "linear") pruned.push_back(tensors[i]);
    else if (s.kind == "ties" || s.kind == "magnitude_prune") pruned.push_back(magnitude_prune(tensors[i], s.density));
    else if (s.kind == "dare_linear" || s.kind == "dare_ties")
      pruned.push_back(random_prune(tensors[i], s.density, s.dare_rescale, i, on_mask));
    else fail("merge: unknown kind '", s.kind, "'");
  }
  auto stacked = torch::stack(pruned, 0);
  torch::Tensor keep;
  if (ties) keep = majority_sign_mask(stacked, s.sign_method);
  auto weighted = stacked * broadcast_weights(weights, stacked);
  return ties ? disjoint_merge(weighted, keep) : weighted.sum(0);
}

}  // namespace peft::merge_ops
