// LoRA's `bias` field (peft's LoraConfig.bias): "all" trains every bias of the model, "lora_only"
// the biases of the layers the adapter wraps (peft's _mark_only_adapters_as_trainable). The
// biases stay the base model's own tensors (a merge keeps them; disabling the adapter does not
// restore them, as in peft); this holder registers them as the adapter's parameters so they
// train, and saves them under peft's names: `<module>.base_layer.bias` for a wrapped layer, the
// plain `<module>.bias` elsewhere.
//
// Deliberate difference: peft 0.13.2 does not save "lora_only" biases (get_peft_model_state_dict
// looks for `<module>.bias`, the state dict has `<module>.base_layer.bias`), so its reload loses
// them. We save them (as `<module>.base_layer.bias`, which Python peft loads too), so a reload
// reproduces the trained model; a peft file without them loads with the base biases, as in peft.
#pragma once
#include <torch/torch.h>

#include <set>
#include <string>

#include "peft/error.h"
#include "peft/tuner.h"

namespace peft {

class TrainableBiases : public InputAdapter {
 public:
  /// `required`: a file must hold every bias (bias = "all"); "lora_only" files from peft hold none.
  TrainableBiases(PretrainedModel& model, bool required) : model_(model), required_(required) {}
  void add(const torch::Tensor& b) {
    if (!b.defined() || !held_.insert(b.unsafeGetTensorImpl()).second) return;
    register_parameter("bias_" + std::to_string(held_.size() - 1), b, true);
  }
  void apply(PretrainedModel&, ModelInput&, KVCache&) override {}
  bool changes_input() const override { return false; }
  // The biases are the base's own tensors, trained in place: every row sees them.
  bool supports_row_adapters() const override { return false; }
  std::string method() const override { return "lora_bias"; }
  /// Keys from the biases' current names in the model (after wrapping: `.base_layer.bias`).
  TensorMap saved_tensors() const override {
    TensorMap out;
    for (auto& p : model_.named_parameters())
      if (held_.count(p.value().unsafeGetTensorImpl())) out["base_model.model." + p.key()] = p.value();
    return out;
  }
  void load_saved(const TensorMap& t, const std::string& source) override {
    torch::NoGradGuard ng;
    for (auto& kv : saved_tensors()) {
      auto it = t.find(kv.first);
      if (it == t.end()) {
        PEFT_CHECK(!required_, source, ": tensor '", kv.first, "' is missing (LoRA with bias = \"all\" saves every bias)");
        continue;
      }
      PEFT_CHECK(it->second.sizes() == kv.second.sizes(), source, ": tensor '", kv.first, "' has shape ",
                 it->second.sizes(), ", expected ", kv.second.sizes());
      kv.second.detach().copy_(it->second);
    }
  }

 private:
  PretrainedModel& model_;
  bool required_;
  std::set<const void*> held_;
};

}  // namespace peft
