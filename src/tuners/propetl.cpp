// ProPETL (Zeng et al. 2023, "One Network, Many Masks: Towards More Parameter-Efficient Transfer
// Learning", sec. 3, eq. 4-6), LoRA prototype: one prototype LoRA (A_p [r, in], B_p [out, r]) per
// targeted module name (q_proj, v_proj), shared by every layer; layer l owns real-valued
// scores S_l and uses the binary masks m_l = 1[S_l among the top (1 - mask_sparsity) of its
// entries], so its update is ΔW_l = (α / r) (B_p ⊙ m_l^B)(A_p ⊙ m_l^A). The masks pass
// gradients to the scores with the straight-through estimator (∂m/∂S := 1). B_p = 0 at init, so
// the model starts as the base; mergeable (ΔW_l is a fixed matrix once trained).
// Trainable: the prototypes plus one score per prototype entry per layer.
//
// Format (ours, peft_type "PROPETL", peft_cpp_format_version 1): adapter_model.safetensors with
//   base_model.propetl_prototype.<name>.lora_A.weight [r, in], ...lora_B.weight [out, r]
//   base_model.model.<module>.propetl_mask_A [r, in] / propetl_mask_B [out, r]   (uint8, 0/1)
//   base_model.model.<module>.propetl_scores_A / propetl_scores_B               (float)
// The masks are what inference needs; the scores are kept so that training resumes from a
// checkpoint. Loading checks that each mask is the one its scores give.
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/tuner.h"

namespace peft {
namespace {

/// The shared prototypes, one LoRA pair per module name.
class Prototypes : public InputAdapter {
 public:
  void apply(PretrainedModel&, ModelInput&, KVCache&) override {}
  bool changes_input() const override { return false; }
  std::string method() const override { return "propetl"; }
  std::pair<torch::Tensor, torch::Tensor> get(const std::string& module, int64_t r, int64_t in, int64_t out, torch::Dtype dt) {
    auto it = pairs_.find(module);
    if (it == pairs_.end()) {
      auto holder = register_module(module, std::make_shared<torch::nn::Module>());
      auto A = holder->register_parameter("lora_A", kaiming_uniform({r, in}, in).to(dt));
      auto B = holder->register_parameter("lora_B", torch::zeros({out, r}, dt));
      it = pairs_.emplace(module, std::make_pair(A, B)).first;
    }
    PEFT_CHECK(it->second.first.size(1) == in && it->second.second.size(0) == out, "PROPETL: modules named '", module,
               "' differ in shape across layers; one prototype cannot serve them (exclude some)");
    return it->second;
  }
  TensorMap saved_tensors() const override {
    TensorMap out;
    for (auto& kv : pairs_) {
      out["base_model.propetl_prototype." + kv.first + ".lora_A.weight"] = kv.second.first;
      out["base_model.propetl_prototype." + kv.first + ".lora_B.weight"] = kv.second.second;
    }
    return out;
  }
  void load_saved(const TensorMap& t, const std::string& source) override {
    torch::NoGradGuard ng;
    for (auto& kv : saved_tensors()) {
      auto it = t.find(kv.first);
      PEFT_CHECK(it != t.end(), source, ": tensor '", kv.first, "' is missing");
      PEFT_CHECK(it->second.sizes() == kv.second.sizes(), source, ": tensor '", kv.first, "' has shape ", it->second.sizes(),
                 ", expected ", kv.second.sizes());
      kv.second.copy_(it->second);
    }
  }

 private:
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> pairs_;
};

/// 1 for the top `keep` fraction of `scores`' entries, 0 elsewhere; with gradients flowing to the
/// scores (straight-through) when they require them.
torch::Tensor binary_mask(const torch::Tensor& scores, double keep) {
  auto flat = scores.detach().reshape({-1});
  int64_t k = std::max<int64_t>(1, static_cast<int64_t>(std::llround(keep * flat.numel())));
  auto thresh = std::get<0>(flat.topk(k)).min();
  auto hard = (scores.detach() >= thresh).to(scores.scalar_type());
  if (torch::GradMode::is_enabled() && scores.requires_grad()) return hard + scores - scores.detach();
  return hard;
}

class ProPetlLayer : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  struct Opts {
    torch::Tensor A, B;  // the shared prototype
    double scaling, keep;
  };
  std::map<std::string, Opts> opts;
  std::string method() const override { return "propetl"; }

  void add(const std::string& a, const Opts& o) {
    opts[a] = o;
    auto dt = o.A.scalar_type();
    add_param(a, "propetl_scores_A", kaiming_uniform(o.A.sizes().vec(), o.A.size(1)).to(dt));
    add_param(a, "propetl_scores_B", kaiming_uniform(o.B.sizes().vec(), o.B.size(1)).to(dt));
    masks_[a] = {torch::zeros(o.A.sizes(), torch::kUInt8), torch::zeros(o.B.sizes(), torch::kUInt8)};
  }
  /// The masked prototype pair of layer adapter `a`: (A_p ⊙ m^A, B_p ⊙ m^B).
  std::pair<torch::Tensor, torch::Tensor> factors(const std::string& a) {
    auto& o = opts.at(a);
    return {o.A * binary_mask(param(a, "propetl_scores_A"), o.keep), o.B * binary_mask(param(a, "propetl_scores_B"), o.keep)};
  }
  torch::Tensor delta_weight(const std::string& a) override {
    auto f = factors(a);
    return opts.at(a).scaling * scale_of(a) * f.second.matmul(f.first);
  }
  bool can_merge() const override { return true; }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto y = base_forward(x);
    for (auto& a : live_adapters()) {
      auto f = factors(a);
      y = y + torch::nn::functional::linear(torch::nn::functional::linear(x, f.first), f.second) * (opts.at(a).scaling * scale_of(a));
    }
    return y;
  }
  /// Adds the uint8 masks, refreshed from the current scores (a load copies into these tensors).
  std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors(const std::string& a) const override {
    auto out = TunerLayer::adapter_tensors(a);
    auto& m = masks_.at(a);
    auto* self = const_cast<ProPetlLayer*>(this);
    torch::NoGradGuard ng;
    m.first.copy_(binary_mask(self->param(a, "propetl_scores_A"), opts.at(a).keep));
    m.second.copy_(binary_mask(self->param(a, "propetl_scores_B"), opts.at(a).keep));
    out.emplace_back("propetl_mask_A", m.first);
    out.emplace_back("propetl_mask_B", m.second);
    return out;
  }
  /// After a load: the stored masks must be the ones the stored scores give.
  void after_load(const std::string& a, const std::string& where) override {
    torch::NoGradGuard ng;
    auto& m = masks_.at(a);
    PEFT_CHECK(torch::equal(m.first, binary_mask(param(a, "propetl_scores_A"), opts.at(a).keep).to(torch::kUInt8)) &&
                   torch::equal(m.second, binary_mask(param(a, "propetl_scores_B"), opts.at(a).keep).to(torch::kUInt8)),
               where, ": propetl_mask_A/B do not match propetl_scores_A/B and mask_sparsity");
  }

 private:
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>> masks_;
};

class ProPetlTuner : public Tuner {
 public:
  std::string peft_type() const override { return "PROPETL"; }
  nlohmann::json defaults() const override {
    return {{"base_model_name_or_path", nullptr}, {"exclude_modules", nullptr}, {"inference_mode", false},
            {"layers_pattern", nullptr},          {"layers_to_transform", nullptr}, {"lora_alpha", 8},
            {"mask_sparsity", 0.5},               {"modules_to_save", nullptr},     {"peft_cpp_format_version", 1},
            {"peft_type", "PROPETL"},             {"r", 8},                         {"target_modules", nullptr},
            {"task_type", nullptr}};
  }
  std::vector<std::string> default_roles() const override { return {"attn.q", "attn.v"}; }
  void validate(const nlohmann::json& c) const override {
    PEFT_CHECK(c["peft_cpp_format_version"] == 1, "adapter config: field 'peft_cpp_format_version' ",
               c["peft_cpp_format_version"].dump(), " is not supported (this build reads version 1)");
    PEFT_CHECK(c["r"].is_number_integer() && c["r"].get<int64_t>() > 0, "adapter config: field 'r' must be a positive integer");
    PEFT_CHECK(c["lora_alpha"].is_number(), "adapter config: field 'lora_alpha' must be a number");
    PEFT_CHECK(c["mask_sparsity"].is_number() && c["mask_sparsity"].get<double>() >= 0 && c["mask_sparsity"].get<double>() < 1,
               "adapter config: field 'mask_sparsity' must be in [0, 1), got ", c["mask_sparsity"].dump());
  }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    pm.set_input_adapter(name, std::make_shared<Prototypes>());
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    auto protos = std::dynamic_pointer_cast<Prototypes>(pm.adapter(name).input);
    TORCH_INTERNAL_ASSERT(protos, "PROPETL: prototypes missing");
    auto cur = slot.get();
    auto layer = std::dynamic_pointer_cast<ProPetlLayer>(cur);
    if (!layer) layer = std::make_shared<ProPetlLayer>(cur);
    auto& lin = layer->base_linear();
    const int64_t r = c["r"].get<int64_t>();
    auto pair = protos->get(slot.name, r, lin.in_features, lin.out_features, lin.weight.scalar_type());
    layer->add(name, {pair.first, pair.second, c["lora_alpha"].get<double>() / r, 1.0 - c["mask_sparsity"].get<double>()});
    if (layer != cur) slot.parent->replace_slot(slot.name, layer);
  }
};

PEFT_REGISTER_TUNER(ProPetlTuner);
PEFT_REGISTER_METHOD("propetl", {{"peft_type", "PROPETL"}});

}  // namespace
}  // namespace peft
