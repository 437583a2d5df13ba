// Invertible adapters (MAD-X, Pfeiffer et al. 2020, sec. 2.3): a language adapter's second part,
// an invertible map A_inv on the token embeddings and its inverse A_inv^{-1} on the input of
// the output embeddings (the head), so that the language-specific change of the vocabulary's
// representation is undone where the model maps back to it. NICE coupling (Dinh et al. 2015,
// sec. 3.2, an additive coupling layer applied twice): e = [e1, e2] (the halves of the hidden
// size),
//     o1 = e1 + F(e2),   o2 = e2 + G(o1);       inverse:  e2 = o2 - G(o1),   e1 = o1 - F(e2),
// F, G: Linear(half -> half / inv_adapter_reduction_factor), the adapter's activation, Linear(->
// half) — AdapterHub's NICECouplingBlock. With init_weights the second Linear of F and G starts
// at zero (A_inv = identity, as our bottleneck adapters start at the base); without, both are
// nn.Linear's init.
//
// Placement, for pre-norm decoders (the model has role "norm.final"): A_inv on the word
// embeddings (before position embeddings, as AdapterHub's GPT-2 and Llama), A_inv^{-1} on the
// final norm's output. Other models refuse with an error naming the role.
// Saved with the adapter as invertible_adapter.{F,G}.{0,2}.{weight,bias} (AdapterHub's
// Sequential indices).
#pragma once
#include <torch/torch.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "peft/tuner.h"

namespace peft {

/// The coupling block of one adapter, applied to the token embeddings (an input adapter). Its
/// tensors are this module's parameters (trained and saved with the adapter); the inverse at
/// the final norm holds a pointer.
class InvertibleAdapter : public InputAdapter {
 public:
  InvertibleAdapter(int64_t hidden, double reduction_factor, std::string act, bool init_weights);
  /// A_inv (rev false) or its inverse, computed in the adapter's dtype; the result in x's dtype.
  torch::Tensor couple(const torch::Tensor& x, bool rev);
  void apply(PretrainedModel& model, ModelInput& in, KVCache& storage) override;
  TensorMap saved_tensors() const override;
  void load_saved(const TensorMap& t, const std::string& source) override;
  std::string method() const override { return "invertible_adapter"; }

 private:
  void reg(const std::string& key, torch::Tensor t);
  torch::Tensor net(const char* which, const torch::Tensor& x);
  int64_t h1_, h2_;
  std::string act_;
  std::map<std::string, torch::Tensor> params_;
};

/// Adds adapter `name`'s invertible adapter when its config has `inv_adapter` set (the
/// bottleneck tuner calls it from add_global).
void add_invertible_adapter(PeftModel& pm, const Tuner& tuner, const std::string& name, const nlohmann::json& cfg);

}  // namespace peft
