// (IA)3 (Liu et al. 2022, "Few-Shot PEFT is Better and Cheaper than In-Context Learning", §3.3):
// learned vectors rescale keys, values and the FFN's intermediate activation, l ⊙ h, init 1.
// As peft implements it on Linear layers: attention targets scale the output
// (y = (x W^T + b) ⊙ l, l ∈ R^out); feed-forward targets scale the input of the FFN's down
// projection (y = (x ⊙ l) W^T + b, l ∈ R^in), which is the same as scaling the activation.
// Merge: W ⊙ l (broadcast over the matching axis), and b ⊙ l for output scaling.
#include <torch/torch.h>

#include <algorithm>


#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"
#include "tuners/default_targets.h"

namespace peft {
namespace {

class IA3Linear : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::map<std::string, bool> feedforward;
  std::string method() const override { return "ia3"; }

  void add(const std::string& a, bool ff, bool init_ones) {
    auto& l = base_linear();
    feedforward[a] = ff;
    auto shape = ff ? std::vector<int64_t>{1, l.in_features} : std::vector<int64_t>{l.out_features, 1};
    auto v = init_ones ? torch::ones(shape) : torch::randn(shape);  // peft: N(0, 1) unless init_ia3_weights
    add_param(a, "ia3_l", v.to(trainable_dtype(l.weight.scalar_type())));
  }
  // The scaling vector of the adapter, blended with the identity by the user scale s: 1 + s (l − 1).
  torch::Tensor vec(const std::string& a) {
    auto l = param(a, "ia3_l").flatten();
    double s = scale_of(a);
    return s == 1.0 ? l : 1 + s * (l - 1);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    if (row_groups) {  // mixed-adapter batch: each row scaled by its adapter's vector (or 1)
      auto in_scale = row_factors(x, [this](const std::string& a) { return feedforward[a] ? vec(a) : torch::Tensor(); });
      auto y = base_forward(in_scale.defined() ? x * in_scale.to(x.scalar_type()) : x);
      auto out_scale = row_factors(y, [this](const std::string& a) { return feedforward[a] ? torch::Tensor() : vec(a); });
      return out_scale.defined() ? y * out_scale.to(y.scalar_type()) : y;
    }
    auto live = live_adapters();
    torch::Tensor in_scale, out_scale;
    for (auto& a : live) {
      auto v = vec(a);
      auto& target = feedforward[a] ? in_scale : out_scale;
      target = target.defined() ? target * v : v;
    }
    auto y = base_forward(in_scale.defined() ? x * in_scale.to(x.scalar_type()) : x);
    return out_scale.defined() ? y * out_scale.to(y.scalar_type()) : y;
  }
  bool supports_row_adapters(const std::string&) const override { return true; }
  bool can_merge() const override { return true; }
  void apply_merge(const std::string& a, bool inverse) {
    torch::NoGradGuard ng;
    auto& lin = base_linear();
    auto W = lin.weight_out_in();
    auto v = vec(a).to(W.scalar_type());
    if (inverse) v = 1.0 / v;
    if (feedforward[a]) {
      W.mul_(v.unsqueeze(0));
    } else {
      W.mul_(v.unsqueeze(1));
      if (lin.bias.defined()) lin.bias.mul_(v);
    }
  }
  void merge(const std::string& a) override { apply_merge(a, false); }
  void unmerge(const std::string& a) override { apply_merge(a, true); }
};

class IA3Tuner : public Tuner {
 public:
  std::string peft_type() const override { return "IA3"; }
  // peft 0.13's IA3Config, then our extension fields.
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    return with_common(
        {
            ConfigField{"feedforward_modules", T::Names, nullptr,
                        "the targets whose input (not output) is scaled; null: peft's default for the model type, else the FFN down projection"}
                .or_null(),
            ConfigField{"init_ia3_weights", T::Bool, true, "true: the scaling vectors start at 1 (the base model)"},
            common_field("exclude_modules").extension(),
            common_field("layers_to_transform").extension(),
            common_field("layers_pattern").extension(),
        },
        {"target_modules", "modules_to_save", "fan_in_fan_out", "base_model_name_or_path", "revision", "task_type",
         "inference_mode", "auto_mapping"});
  }
  std::vector<std::string> default_roles() const override { return {role::kAttnK, role::kAttnV, role::kMlpDown}; }
  /// peft's IA3Config check: given both as lists, feedforward_modules must be a subset of target_modules.
  void validate(const nlohmann::json& c) const override {
    const auto &tm = c["target_modules"], &ff = c["feedforward_modules"];
    if (!tm.is_array() || !ff.is_array()) return;
    for (auto& f : ff)
      PEFT_CHECK(std::find(tm.begin(), tm.end(), f) != tm.end(), "adapter config: field 'feedforward_modules' entry ",
                 f.dump(), " is not in target_modules (peft: feedforward_modules should be a subset of target_modules)");
  }
  /// feedforward_modules resolved once and stored (peft saves the list it used): peft's default
  /// for the model type, else the model's FFN down projection (role mlp.down); role names translated.
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    auto& c = pm.mutable_config(name);
    auto roles = pm.model->roles();
    auto ff = c["feedforward_modules"];
    if (ff.is_null()) ff = peft_default_feedforward(pm.model->model_type());
    if (ff.is_null()) {
      ff = nlohmann::json::array();
      if (roles.count(role::kMlpDown)) ff.push_back(roles[role::kMlpDown]);
    } else if (ff.is_array()) {
      nlohmann::json r = nlohmann::json::array();
      for (auto& v : ff) {
        PEFT_CHECK(v.is_string(), "adapter config: field 'feedforward_modules' must hold strings, got ", v.dump());
        r.push_back(roles.count(v.get<std::string>()) ? roles[v.get<std::string>()] : v.get<std::string>());
      }
      ff = r;
    }
    c["feedforward_modules"] = ff;
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    const auto& ff_spec = c["feedforward_modules"];
    wrap<IA3Linear>(slot, [&](IA3Linear& layer) {
      layer.add(name, module_name_matches(ff_spec, slot.path), c["init_ia3_weights"].get<bool>());
    });
  }
};

PEFT_REGISTER_TUNER(IA3Tuner);
PEFT_REGISTER_METHOD("ia3", {{"peft_type", "IA3"}});

}  // namespace
}  // namespace peft
