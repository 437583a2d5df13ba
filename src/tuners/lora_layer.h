// The LoRA layer on a Linear slot (src/tuners/lora.cpp is the tuner; lora_variants.h the
// inits and variants the layer calls).
#pragma once
#include <torch/torch.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "peft/tuner.h"
#include "tuners/lora_variants.h"

namespace peft {

/// LoRA on a Linear slot: base(x) + Σ_a term_a(x). The per-adapter state the base change needs
/// (PiSSA / OLoRA / LoftQ inits, Delta-LoRA) is kept here; the variants hold none.
class LoraLinear : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::map<std::string, LoraOptions> opt;
  // Base change made on the adapter's behalf: W = W0 + delta_coef·(B A) + res_coef·(B0 A0).
  std::map<std::string, torch::Tensor> res_A, res_B, prev_BA;
  std::map<std::string, double> res_coef;
  std::map<std::string, torch::Tensor> dora_norm;  // row norms used at merge time
  std::set<std::string> delta_started;

  std::string method() const override;
  void add(const std::string& a, const LoraOptions& o, bool loading);
  static torch::Tensor row_norm(const torch::Tensor& W) { return W.norm(2, {1}); }
  torch::Tensor delta_weight(const std::string& a) override;
  /// The adapter's term added to base(x) (x: the rows it acts on).
  torch::Tensor term(const std::string& a, const torch::Tensor& x);
  torch::Tensor forward(const torch::Tensor& x) override;
  /// Per-row use needs the base left alone: not while the base carries part of the adapter
  /// (a fresh PiSSA / OLoRA init, Delta-LoRA's updates).
  bool supports_row_adapters(const std::string& a) const override { return !res_A.count(a); }
  void remove_adapter(const std::string& a) override;
  bool can_merge() const override;
  /// Half activations pass: every variant but those touching the float base weight (DoRA,
  /// Delta-LoRA) computes its term from x cast to float32 (additive_forward).
  bool keeps_half_activations() const override;
  void merge(const std::string& a) override;
  void unmerge(const std::string& a) override;
  void after_step(const std::string& a, int64_t step) override;
  /// Saved as a rank-2r LoRA when the base carries part of the adapter (see lora.cpp).
  std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors(const std::string& a) const override;

 private:
  bool gatherable() const;
  torch::Tensor gathered_forward(const torch::Tensor& x);
};

}  // namespace peft
