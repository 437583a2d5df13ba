// ProPETL (Zeng et al. 2023, "One Network, Many Masks: Towards More Parameter-Efficient Transfer
// Learning", sec. 3, eq. 4-6): one prototype network per targeted module name, shared by every
// layer; layer l owns real-valued scores S_l and uses the binary masks m_l = 1[S_l among the top
// (1 - mask_sparsity) of its entries] over the prototype's weights. The masks pass gradients to
// the scores with the straight-through estimator (∂m/∂S := 1). `prototype` picks the network:
//
// - "adapter" (the paper's main setting, sec. 3.2): a sequential bottleneck adapter
//   h + W_up f(W_down h + b_down) + b_up after the FFN output (role "mlp.down", as Pfeiffer;
//   target_modules overrides), with layer l using (W_down ⊙ m_l^down, W_up ⊙ m_l^up). The masks
//   cover the weight matrices; the prototype's biases are shared unmasked (as the masks of the
//   paper, which are over the prototype's weight matrices). b = bottleneck_size, or
//   hidden_size / reduction_factor. Not mergeable (non-linear).
// - "lora" (default, for configs written before `prototype` existed; on attn.q / attn.v): one
//   prototype LoRA (A_p [r, in], B_p [out, r]) per module name, ΔW_l = (α / r) (B_p ⊙ m_l^B)(A_p ⊙
//   m_l^A); mergeable (ΔW_l is a fixed matrix once trained).
// W_up / B_p = 0 at init, so the model starts as the base. Trainable: the prototypes plus one
// score per masked prototype entry per layer.
//
// Format (ours, peft_type "PROPETL", peft_cpp_format_version 1): adapter_model.safetensors with
//   base_model.propetl_prototype.<name>.lora_A.weight [r, in], ...lora_B.weight [out, r]      (lora)
//   base_model.propetl_prototype.<name>.adapter_down.weight [b, d] / .adapter_down.bias [b],
//     ...adapter_up.weight [d, b] / .adapter_up.bias [d]                                      (adapter)
//   base_model.model.<module>.propetl_mask_<X> (uint8, 0/1) / propetl_scores_<X> (float), with
//     X in {A, B} (lora) or {down, up} (adapter), each shaped as its prototype weight.
// The masks are what inference needs; the scores are kept so that training resumes from a
// checkpoint. Loading checks that each mask is the one its scores give.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"
#include "tuners/bottleneck.h"

namespace peft {
namespace {

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

/// The shared prototypes: per module name, its tensors by saved key suffix ("lora_A.weight").
class Prototypes : public InputAdapter {
 public:
  void apply(PretrainedModel&, ModelInput&, KVCache&) override {}
  bool changes_input() const override { return false; }
  std::string method() const override { return "propetl"; }
  /// The prototype of `module`, made by `make` on first use; `want` (key -> shape) must match it.
  std::map<std::string, torch::Tensor> get(const std::string& module, const std::function<Named()>& make,
                                           const std::map<std::string, std::vector<int64_t>>& want) {
    auto it = protos_.find(module);
    if (it == protos_.end()) {
      auto holder = register_module(module, std::make_shared<torch::nn::Module>());
      std::map<std::string, torch::Tensor> m;
      for (auto& [key, t] : make()) {
        std::string pname = key;
        std::replace(pname.begin(), pname.end(), '.', '_');  // parameter names cannot hold dots
        m[key] = holder->register_parameter(pname, t);
      }
      it = protos_.emplace(module, std::move(m)).first;
    }
    for (auto& [key, shape] : want)
      PEFT_CHECK(it->second.count(key) && it->second.at(key).sizes() == shape, "PROPETL: modules named '", module,
                 "' differ in shape across layers; one prototype cannot serve them (exclude some)");
    return it->second;
  }
  TensorMap saved_tensors() const override {
    TensorMap out;
    for (auto& kv : protos_)
      for (auto& t : kv.second) out["base_model.propetl_prototype." + kv.first + "." + t.first] = t.second;
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
  std::map<std::string, std::map<std::string, torch::Tensor>> protos_;
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
    bool adapter;                                // the adapter prototype (else LoRA)
    std::map<std::string, torch::Tensor> proto;  // the shared prototype, by saved key suffix
    double scaling, keep;
    std::string act;
  };
  std::map<std::string, Opts> opts;
  std::string method() const override { return "propetl"; }

  /// Mask names and the prototype weight each one covers.
  static std::vector<std::pair<std::string, std::string>> masked(bool adapter) {
    if (adapter) return {{"down", "adapter_down.weight"}, {"up", "adapter_up.weight"}};
    return {{"A", "lora_A.weight"}, {"B", "lora_B.weight"}};
  }
  void add(const std::string& a, const Opts& o) {
    opts[a] = o;
    for (auto& [x, key] : masked(o.adapter)) {
      auto& W = o.proto.at(key);
      add_param(a, "propetl_scores_" + x, kaiming_uniform(W.sizes().vec(), W.size(1)).to(W.scalar_type()));
      masks_[a][x] = torch::zeros(W.sizes(), torch::kUInt8);
    }
  }
  /// Prototype weight `key` of adapter `a` under layer mask `x`: W_p ⊙ m_l^x.
  torch::Tensor masked_weight(const std::string& a, const std::string& x, const std::string& key) {
    auto& o = opts.at(a);
    return o.proto.at(key) * binary_mask(param(a, "propetl_scores_" + x), o.keep);
  }
  torch::Tensor delta_weight(const std::string& a) override {
    if (opts.at(a).adapter) return {};
    return opts.at(a).scaling * scale_of(a) * masked_weight(a, "B", "lora_B.weight").matmul(masked_weight(a, "A", "lora_A.weight"));
  }
  bool can_merge() const override {
    for (auto& kv : opts)
      if (kv.second.adapter) return false;
    return true;
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    namespace F = torch::nn::functional;
    auto y = base_forward(x);
    for (auto& a : live_adapters()) {
      auto& o = opts.at(a);
      if (o.adapter) {  // sequential: reads the running output
        auto z = activation(o.act, F::linear(y, masked_weight(a, "down", "adapter_down.weight"), o.proto.at("adapter_down.bias")));
        y = y + F::linear(z, masked_weight(a, "up", "adapter_up.weight"), o.proto.at("adapter_up.bias")) * scale_of(a);
      } else {
        auto A = masked_weight(a, "A", "lora_A.weight"), B = masked_weight(a, "B", "lora_B.weight");
        y = y + F::linear(F::linear(x, A), B) * (o.scaling * scale_of(a));
      }
    }
    return y;
  }
  /// Adds the uint8 masks, refreshed from the current scores (a load copies into these tensors).
  std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors(const std::string& a) const override {
    auto out = TunerLayer::adapter_tensors(a);
    auto* self = const_cast<ProPetlLayer*>(this);
    torch::NoGradGuard ng;
    for (auto& [x, key] : masked(opts.at(a).adapter)) {
      auto& m = masks_.at(a).at(x);
      m.copy_(binary_mask(self->param(a, "propetl_scores_" + x), opts.at(a).keep));
      out.emplace_back("propetl_mask_" + x, m);
    }
    return out;
  }
  /// After a load: the stored masks must be the ones the stored scores give.
  void after_load(const std::string& a, const std::string& where) override {
    torch::NoGradGuard ng;
    auto names = masked(opts.at(a).adapter);
    bool ok = true;
    for (auto& [x, key] : names)
      ok = ok && torch::equal(masks_.at(a).at(x), binary_mask(param(a, "propetl_scores_" + x), opts.at(a).keep).to(torch::kUInt8));
    PEFT_CHECK(ok, where, ": propetl_mask_", names[0].first, "/", names[1].first, " do not match propetl_scores_", names[0].first,
               "/", names[1].first, " and mask_sparsity");
  }

 private:
  std::map<std::string, std::map<std::string, torch::Tensor>> masks_;
};

class ProPetlTuner : public Tuner {
 public:
  std::string peft_type() const override { return "PROPETL"; }
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    return with_common(
        {
            ConfigField{"prototype", T::String, "lora", "the shared prototype network: a LoRA (on attn.q / attn.v) or a bottleneck adapter"}
                .one_of({"lora", "adapter"}),
            ConfigField{"r", T::Int, 8, "the LoRA prototype's rank"}.at_least(1),
            ConfigField{"lora_alpha", T::Number, 8, "the LoRA prototype's scale alpha / r"},
            ConfigField{"mask_sparsity", T::Number, 0.5, "fraction of each prototype weight a layer's binary mask removes"}
                .in_range(0, 1),
            ConfigField{"reduction_factor", T::Number, 16, "the adapter prototype's width = hidden / reduction_factor"}.above(0),
            ConfigField{"bottleneck_size", T::Int, nullptr, "the adapter prototype's width; null: from reduction_factor"}
                .at_least(1)
                .or_null(),
            ConfigField{"non_linearity", T::String, "relu", "the adapter prototype's activation"},
            ConfigField{"peft_cpp_format_version", T::Int, 1, "the file layout's version (this build reads 1)"}.one_of({1}),
        },
        {"target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
         "base_model_name_or_path", "task_type", "inference_mode"});
  }
  std::vector<std::string> default_roles() const override { return {role::kAttnQ, role::kAttnV}; }
  void validate(const nlohmann::json& c) const override { check_activation(c["non_linearity"].get<std::string>()); }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    pm.set_input_adapter(name, std::make_shared<Prototypes>());
    auto& c = pm.mutable_config(name);
    if (c["prototype"] != "adapter" || !c["target_modules"].is_null()) return;
    // The adapter prototype sits after the FFN output (Pfeiffer placement), resolved like BOTTLENECK's.
    auto roles = pm.model->roles();
    PEFT_CHECK(roles.count(role::kMlpDown), "PROPETL (adapter prototype): model type '", pm.model->model_type(),
               "' has no 'mlp.down' module; give target_modules explicitly");
    auto down = roles[role::kMlpDown];
    c["target_modules"] = {down};
    // A suffix like BERT's "output.dense" also names the attention output: keep it out.
    if (roles.count(role::kAttnO) && c["exclude_modules"].is_null()) {
      auto o = roles[role::kAttnO];
      if (o != down && o.size() > down.size() && o.compare(o.size() - down.size(), down.size(), down) == 0 &&
          o[o.size() - down.size() - 1] == '.')
        c["exclude_modules"] = {o};
    }
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    auto protos = std::dynamic_pointer_cast<Prototypes>(pm.adapter(name).input);
    TORCH_INTERNAL_ASSERT(protos, "PROPETL: prototypes missing");
    wrap<ProPetlLayer>(slot, [&](ProPetlLayer& layer) {
      auto& lin = layer.base_linear();
      auto dt = trainable_dtype(lin.weight.scalar_type());
      const bool adapter = c["prototype"] == "adapter";
      ProPetlLayer::Opts o{adapter, {}, 1.0, 1.0 - c["mask_sparsity"].get<double>(), c["non_linearity"].get<std::string>()};
      if (adapter) {
        const int64_t d = lin.out_features, b = adapter_bottleneck_size(c, pm.model->dims().hidden_size);
        o.proto = protos->get(slot.name, [&] {  // each part initialised as its own nn.Linear; W_up = 0
          return Named{{"adapter_down.weight", kaiming_uniform({b, d}, d).to(dt)},
                       {"adapter_down.bias", kaiming_uniform({b}, d).to(dt)},
                       {"adapter_up.weight", torch::zeros({d, b}, dt)},
                       {"adapter_up.bias", torch::zeros({d}, dt)}};
        }, {{"adapter_down.weight", {b, d}}, {"adapter_up.weight", {d, b}}});
      } else {
        const int64_t r = c["r"].get<int64_t>();
        o.scaling = c["lora_alpha"].get<double>() / r;
        o.proto = protos->get(slot.name, [&] {
          return Named{{"lora_A.weight", kaiming_uniform({r, lin.in_features}, lin.in_features).to(dt)},
                       {"lora_B.weight", torch::zeros({lin.out_features, r}, dt)}};
        }, {{"lora_A.weight", {r, lin.in_features}}, {"lora_B.weight", {lin.out_features, r}}});
      }
      layer.add(name, o);
    });
  }
};

PEFT_REGISTER_TUNER(ProPetlTuner);
PEFT_REGISTER_METHOD("propetl", {{"peft_type", "PROPETL"}});

}  // namespace
}  // namespace peft
