// Composition blocks over bottleneck adapters (AdapterHub's semantics, docs/MULTI_ADAPTER.md):
// adapters in their own right, holding no bottleneck of their own, that combine the bottleneck
// adapters they name at every slot those hold:
//
// - peft_type "ADAPTER_AVERAGE": AdapterHub's Average(a, b, weights, normalize_weights): every
//   child on the same input, h + sum_i w_i z_i (weights divided by their sum when
//   normalize_weights). No tensors.
// - peft_type "ADAPTER_FUSION": AdapterFusion (Pfeiffer et al. 2021, "AdapterFusion:
//   Non-Destructive Task Composition for Transfer Learning", sec. 3.2): per slot Q, K, V (d x d
//   Linears), y_i = h + z_i, s = softmax_i((Q h)^T (K y_i) / T), output sum_i s_i V y_i. V starts
//   as the identity. Trained with the children frozen (`peft train --method adapter_fusion
//   --stack_adapters a=DIR,b=DIR`).
//
// Activating the block with its children, set_adapter({"a", "b", "fusion"}), runs the children
// only through the block; other active adapters at the slot stack around it in order
// (Stack(lang, Fuse(a, b)): set_adapter({"lang", "a", "b", "fusion"})).
//
// Config fields: adapters (list of names, or "a,b"; null: every bottleneck adapter the model
// holds, by name), target_modules / layers_to_transform (null: the first child's), temperature
// and init_weights (fusion), weights and normalize_weights (average). Saved tensors (fusion), per
// module <m>: K.fusion_query.weight [d, d], K.fusion_query.bias [d], likewise fusion_key and
// fusion_value (K = base_model.model.<m>).
#include <torch/torch.h>

#include <cmath>
#include <sstream>

#include "peft/error.h"
#include "peft/tuner.h"
#include "tuners/bottleneck.h"

namespace peft {
namespace {

std::vector<std::string> names_of(const nlohmann::json& v) {
  std::vector<std::string> out;
  if (v.is_string()) {
    std::stringstream ss(v.get<std::string>());
    for (std::string s; std::getline(ss, s, ',');)
      if (!s.empty()) out.push_back(s);
  } else if (v.is_array()) {
    for (auto& e : v) {
      PEFT_CHECK(e.is_string(), "adapter config: field 'adapters' must list adapter names, got ", v.dump());
      out.push_back(e.get<std::string>());
    }
  }
  return out;
}

class CompositionTuner : public Tuner {
 public:
  explicit CompositionTuner(std::string kind) : kind_(std::move(kind)) {}
  std::string peft_type() const override { return kind_ == "fuse" ? "ADAPTER_FUSION" : "ADAPTER_AVERAGE"; }
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    std::vector<ConfigField> f = {
        ConfigField{"adapters", T::Names, nullptr, "the bottleneck adapters composed, by name; null: every loaded one"}.or_null(),
        ConfigField{"peft_cpp_format_version", T::Int, 1, "the file layout's version (this build reads 1)"}.one_of({1}),
    };
    if (kind_ == "fuse") {
      f.push_back(ConfigField{"temperature", T::Number, 1.0, "softmax temperature of the attention over adapter outputs"}.above(0));
      f.push_back(ConfigField{"init_weights", T::Bool, true, "true: the value matrix starts at the identity (AdapterHub)"});
    } else {
      f.push_back(ConfigField{"weights", T::Any, nullptr, "one weight per adapter; null: equal weights"}.or_null());
      f.push_back(ConfigField{"normalize_weights", T::Bool, true, "divide the weights by their sum"});
    }
    return with_common(std::move(f), {"target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
                                      "modules_to_save", "base_model_name_or_path", "task_type", "inference_mode"});
  }
  void validate(const nlohmann::json& c) const override {
    if (kind_ != "fuse") {
      PEFT_CHECK(c["weights"].is_null() || c["weights"].is_array(), "adapter config: field 'weights' must be a list of numbers");
      for (auto& w : c["weights"].is_array() ? c["weights"] : nlohmann::json::array())
        PEFT_CHECK(w.is_number() && std::isfinite(w.get<double>()), "adapter config: field 'weights' must be finite numbers, got ",
                   c["weights"].dump());
    }
  }
  // The children, and where they are: resolved into the stored config before injection.
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    auto& c = pm.mutable_config(name);
    auto kids = names_of(c["adapters"]);
    if (c["adapters"].is_null())
      for (auto& [n, e] : pm.adapters())
        if (n != name && e.tuner->peft_type() == "BOTTLENECK") kids.push_back(n);
    PEFT_CHECK(!kids.empty(), "adapter composition '", name, "': no adapters to compose (load bottleneck adapters first, "
               "or name them in field 'adapters')");
    for (auto& k : kids) {
      PEFT_CHECK(k != name && pm.adapters().count(k), "adapter composition '", name, "': field 'adapters' names '", k,
                 "', which is not loaded");
      PEFT_CHECK(pm.adapter(k).tuner->peft_type() == "BOTTLENECK", "adapter composition '", name, "': adapter '", k,
                 "' is ", pm.adapter(k).tuner->peft_type(), "; blocks compose bottleneck adapters");
    }
    c["adapters"] = kids;
    const auto& first = pm.adapter(kids[0]).config;
    for (const char* f : {"target_modules", "layers_to_transform", "layers_pattern", "exclude_modules"})
      if (c[f].is_null()) c[f] = first.value(f, nlohmann::json());
    if (kind_ == "average") {
      if (c["weights"].is_null()) c["weights"] = std::vector<double>(kids.size(), 1.0 / kids.size());
      PEFT_CHECK(c["weights"].size() == kids.size(), "adapter composition '", name, "': field 'weights' has ",
                 c["weights"].size(), " weights for ", kids.size(), " adapters");
    }
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    AdapterBlock b;
    b.kind = kind_;
    b.children = names_of(c["adapters"]);
    if (kind_ == "fuse") {
      b.temperature = c["temperature"].get<double>();
      b.init_weights = c["init_weights"].get<bool>();
    } else {
      double sum = 0;
      for (auto& w : c["weights"]) b.weights.push_back(w.get<double>()), sum += w.get<double>();
      if (c["normalize_weights"].get<bool>()) {
        PEFT_CHECK(sum != 0, "adapter composition '", name, "': weights sum to 0 and cannot be normalized");
        for (auto& w : b.weights) w /= sum;
      }
    }
    add_adapter_block(slot.get().get(), name, b, slot.path);
  }

 private:
  std::string kind_;
};

[[maybe_unused]] const bool kFusion = register_tuner(std::make_shared<CompositionTuner>("fuse"));
[[maybe_unused]] const bool kAverage = register_tuner(std::make_shared<CompositionTuner>("average"));

}  // namespace
}  // namespace peft
