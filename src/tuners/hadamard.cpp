// Hadamard adapter (Chen et al. 2023, "Hadamard Adapter: An Extreme Parameter-Efficient Adapter
// Tuning Method for Pre-trained Language Models", CIKM, sec. 3, eq. A' = W ⊙ A + b): an
// element-wise affine map of each block's self-attention output A, with w (init 1) and b (init 0)
// of the hidden size, so the model starts as the base. The paper's A is the multi-head attention
// output, MultiHead(Q, K, V) = Concat(heads) W^O (Vaswani et al. 2017), so we wrap the attention
// output projection (role "attn.o") and act on its output, before the residual add / LayerNorm.
// (The paper also unfreezes the LayerNorms; add them with modules_to_save or the ln-tuning hybrid.)
//
// Mergeable into that projection: W' = diag(w) W0, b' = w ⊙ b0 + b. A projection without a bias
// (Llama's o_proj) can absorb b only when b is zero, so merge then errors otherwise.
//
// Format (peft_type "HADAMARD", peft_cpp_format_version 1): per wrapped module <m>
// (K = base_model.model.<m>): K.hadamard_w [out], K.hadamard_b [out].
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"

namespace peft {
namespace {

class HadamardLayer : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::string method() const override { return "hadamard"; }

  void add(const std::string& a, int64_t out, torch::ScalarType dt, bool init_weights) {
    add_param(a, "hadamard_w", init_weights ? torch::ones({out}, dt) : 1 + 0.1 * torch::randn({out}, dt));
    add_param(a, "hadamard_b", init_weights ? torch::zeros({out}, dt) : 0.1 * torch::randn({out}, dt));
  }
  // The user scale s blends with the identity: w_s = 1 + s (w - 1), b_s = s b.
  std::pair<torch::Tensor, torch::Tensor> affine(const std::string& a) {
    double s = scale_of(a);
    auto w = param(a, "hadamard_w"), b = param(a, "hadamard_b");
    return s == 1.0 ? std::make_pair(w, b) : std::make_pair(1 + s * (w - 1), s * b);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto h = base_forward(x);
    for (auto& a : live_adapters()) {
      auto [w, b] = affine(a);
      h = torch::addcmul(b.to(h.scalar_type()), h, w.to(h.scalar_type()));
    }
    return h;
  }
  bool can_merge() const override { return true; }
  void merge(const std::string& a) override {
    torch::NoGradGuard ng;
    auto& lin = base_linear();
    auto [w, b] = affine(a);
    PEFT_CHECK(lin.bias.defined() || b.abs().max().item<double>() == 0.0, "HADAMARD adapter '", a,
               "': the wrapped projection has no bias to absorb hadamard_b (merge needs b = 0 here)");
    saved_[a] = {lin.weight.clone(), lin.bias.defined() ? lin.bias.clone() : torch::Tensor()};
    auto W = lin.weight_out_in();
    W.mul_(w.to(W.scalar_type()).unsqueeze(1));
    if (lin.bias.defined()) lin.bias.mul_(w.to(W.scalar_type())).add_(b.to(W.scalar_type()));
  }
  void unmerge(const std::string& a) override {
    torch::NoGradGuard ng;
    auto& lin = base_linear();
    auto& s = saved_.at(a);
    lin.weight.copy_(s.first);
    if (lin.bias.defined()) lin.bias.copy_(s.second);
    saved_.erase(a);
  }

 private:
  // Exact base weights while merged: dividing by w would lose bits (and fail where w = 0).
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> saved_;
};

class HadamardTuner : public Tuner {
 public:
  std::string peft_type() const override { return "HADAMARD"; }
  // Ours (peft has no Hadamard adapter): every field is written to adapter_config.json.
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    return with_common(
        {
            ConfigField{"init_weights", T::Bool, true, "true: w = 1, b = 0 (the base model); false: random (tests)"},
            ConfigField{"peft_cpp_format_version", T::Int, 1, "the file layout's version (this build reads 1)"}.one_of({1}),
        },
        {"target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
         "base_model_name_or_path", "task_type", "inference_mode"});
  }
  std::vector<std::string> default_roles() const override { return {role::kAttnO}; }
  void inject(PeftModel&, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    wrap<HadamardLayer>(slot, [&](HadamardLayer& layer) {
      auto& lin = layer.base_linear();  // errors naming the slot when it is not a Linear
      layer.add(name, lin.out_features, trainable_dtype(lin.weight.scalar_type()), c["init_weights"].get<bool>());
    });
  }
};

PEFT_REGISTER_TUNER(HadamardTuner);
PEFT_REGISTER_METHOD("hadamard", {{"peft_type", "HADAMARD"}});

}  // namespace
}  // namespace peft
