// COMPOSITE (ours, peft_cpp_format_version 1): several registered methods under one adapter
// name, the unified view of He et al. 2022 ("Towards a Unified View of Parameter-Efficient
// Transfer Learning", sec. 3, table 1: each method is a modification Δh placed at some
// sublayer; they compose by adding up) and the survey's hybrid/unified families.
//
//   {"peft_type": "COMPOSITE", "peft_cpp_format_version": 1,
//    "components": [{"peft_type": "LORA", "r": 4, "layers_to_transform": [0, 1]},
//                   {"peft_type": "BOTTLENECK", "adapter_type": "pfeiffer", "layers_to_transform": [2, 3]}]}
//
// Each component is a full config of a registered tuner (its defaults filled in, its own
// targeting fields, so components may act on different layers: S4-style layer groups). The
// components act in list order: component i's add_global and injection see the model as
// components < i left it; two components wrapping the same module stack (the later one wraps
// the earlier), except two of the same peft_type, which are refused (their parameter names
// would collide). At most one component may hold model-level tensors (prompt/prefix tuning,
// VeRA): PeftModel keeps one input adapter per name.
//
// S4 (Chen et al. 2023, "Parameter-Efficient Fine-Tuning Design Spaces", sec. 4): layers split
// into 4 groups ("spindle": sizes in proportion 1:2:2:1; also "uniform", "increasing" 1:2:3:4,
// "decreasing" 4:3:2:1), one strategy set per group. `s4_groups` (a list of groups, each a list
// of method names or component configs) is expanded when the adapter is added, into components
// with the group's layers_to_transform; a strategy listed in several groups becomes one
// component over the union of their layers (the same per-layer assignment, and two components of
// one peft_type would collide on a module anyway). Methods that act on the model input rather
// than on layers (prefix tuning) become one component over every layer. BitFit and LoRA
// components are moved first, so an adapter on the same module reads the sublayer output they
// change (as in the paper, where they act inside the Linear). The stored config holds the
// expanded components only.
// The preset "s4" is the paper's S4-model (sec. 4.4, spindle grouping, all groups tuned):
//   G1: adapter + LoRA, G2: adapter + prefix, G3: adapter + prefix + BitFit, G4: prefix + BitFit + LoRA
// with Houlsby adapters, LoRA r 8 on q/v, prefix tuning of 10 virtual tokens (no reparameterisation
// MLP) and BitFit. Deviations: (1) our prefix tuning prefixes every layer's attention, G1's too
// (the KV prefix is one model-level tensor); (2) BitFit sets add_missing_biases, so bias-less
// models (Llama, T5) train zero-initialised biases where the paper's backbones (T5 has none
// either) would have nothing to tune; (3) the paper's uniform parameter allocation across layers
// is not enforced (each method keeps its own size).
// Files: adapter_config.json holds the composite fields and the components (defaults applied,
// each as its tuner would save it); adapter_model.safetensors keys are namespaced per component:
//   components.<i>.<the key component i saves alone>
// e.g. components.0.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight and
// components.2.prompt_embeddings (a module stacked over another keeps `.base_layer.` in its path).
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "io/suggest.h"
#include "peft/error.h"
#include "peft/tuner.h"

namespace peft {

std::vector<std::vector<int64_t>> s4_layer_groups(int64_t num_layers, const std::string& grouping) {
  std::vector<double> w;
  if (grouping == "spindle") w = {1, 2, 2, 1};
  else if (grouping == "uniform") w = {1, 1, 1, 1};
  else if (grouping == "increasing") w = {1, 2, 3, 4};
  else if (grouping == "decreasing") w = {4, 3, 2, 1};
  else fail("adapter config: field 's4_grouping' must be spindle, uniform, increasing or decreasing, got '", grouping, "'");
  double total = 0, cum = 0;
  for (double x : w) total += x;
  std::vector<std::vector<int64_t>> groups;
  int64_t start = 0;
  for (double x : w) {
    cum += x;
    auto end = static_cast<int64_t>(std::floor(num_layers * cum / total + 0.5));
    groups.emplace_back();
    for (int64_t l = start; l < end; ++l) groups.back().push_back(l);
    start = end;
  }
  return groups;
}

namespace {

std::string where(size_t i, const nlohmann::json& comp) {
  return str_cat("adapter config: components[", i, "] (", comp.value("peft_type", std::string("?")), ")");
}

/// Tuners that hold an InputAdapter (PeftModel keeps one per adapter name).
bool holds_input(const Tuner& t) { return !t.targets_modules() || t.peft_type() == "VERA"; }

/// A component with its tuner's defaults filled in; unknown fields are errors (our format).
nlohmann::json complete(const nlohmann::json& comp, size_t i) {
  PEFT_CHECK(comp.is_object() && comp.contains("peft_type") && comp["peft_type"].is_string(), "adapter config: components[", i,
             "] must be an object with a 'peft_type'");
  auto t = find_tuner(comp["peft_type"].get<std::string>());
  PEFT_CHECK(t->peft_type() != "COMPOSITE", where(i, comp), ": composites do not nest");
  nlohmann::json full = t->defaults();
  const auto keys = t->config_keys();
  for (auto& kv : comp.items()) {
    PEFT_CHECK(std::find(keys.begin(), keys.end(), kv.key()) != keys.end(), where(i, comp), ": unknown field '",
               kv.key(), "'", did_you_mean(kv.key(), keys));
    full[kv.key()] = kv.value();
  }
  full["peft_type"] = t->peft_type();
  with_context(where(i, comp), [&] { t->check(full); });
  return full;
}

nlohmann::json component_of(const nlohmann::json& entry) {
  if (entry.is_string()) return method_config(entry.get<std::string>());
  PEFT_CHECK(entry.is_object(), "adapter config: field 's4_groups': entries must be method names or component configs, got ",
             entry.dump());
  return entry;
}

class CompositeTuner : public Tuner {
 public:
  std::string peft_type() const override { return "COMPOSITE"; }
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    return with_common(
        {
            ConfigField{"components", T::Any, nlohmann::json::array(),
                        "the component adapters, each a config with its peft_type (its own fields, checked by its table)"},
            ConfigField{"s4_grouping", T::String, "spindle", "S4: how the layers split into 4 groups (widths 1:2:2:1, ...)"}
                .one_of({"spindle", "uniform", "increasing", "decreasing"}),
            ConfigField{"s4_groups", T::Any, nullptr,
                        "S4: one list of method names or component configs per layer group; null: components as given"}
                .or_null(),
            ConfigField{"peft_cpp_format_version", T::Int, 1, "the file layout's version (this build reads 1)"}.one_of({1}),
        },
        {"base_model_name_or_path", "task_type", "inference_mode", "modules_to_save"});
  }
  void validate(const nlohmann::json& c) const override {
    PEFT_CHECK(c["components"].is_array(), "adapter config: field 'components' must be a list of adapter configs");
    PEFT_CHECK(c["s4_groups"].is_null() || c["s4_groups"].is_array(), "adapter config: field 's4_groups' must be a list of groups or null");
    PEFT_CHECK(!c["components"].empty() || !c["s4_groups"].is_null(), "adapter config: field 'components' is empty");
    int64_t holders = 0;
    for (size_t i = 0; i < c["components"].size(); ++i) {
      auto full = complete(c["components"][i], i);
      if (holds_input(*find_tuner(full["peft_type"].get<std::string>())) ||
          (full["peft_type"] == "LORA" && full["bias"] != "none"))
        PEFT_CHECK(++holders <= 1, where(i, full),
                   ": only one component may be a prompt/prefix method, VeRA or LoRA with trainable biases");
    }
  }

  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    auto& c = pm.mutable_config(name);
    if (!c["s4_groups"].is_null()) expand_s4(pm, c);
    for (size_t i = 0; i < c["components"].size(); ++i) {
      auto comp = complete(c["components"][i], i);
      if (comp.contains("task_type") && comp["task_type"].is_null()) comp["task_type"] = c["task_type"];
      c["components"][i] = comp;
    }
    validate(c);  // again: s4 may have added components
    for (size_t i = 0; i < c["components"].size(); ++i)
      as_component(pm, name, i, [&](const nlohmann::json& comp) { tuner(comp)->add_global(pm, name, comp); });
  }

  void inject_all(PeftModel& pm, const std::string& name, const nlohmann::json& c) const override {
    // Every component's slots are chosen on the unwrapped model, then injected in order.
    std::vector<std::vector<SlotRef>> slots(c["components"].size());
    std::map<std::pair<std::string, std::string>, size_t> owner;  // (peft_type, path) -> component
    for (size_t i = 0; i < slots.size(); ++i) {
      const auto& comp = c["components"][i];
      auto t = tuner(comp);
      if (!t->targets_modules()) continue;
      slots[i] = with_context(where(i, comp), [&] { return pm.select_slots(*t, comp); });
      for (auto& s : slots[i]) {
        auto it = owner.emplace(std::make_pair(t->peft_type(), s.path), i);
        PEFT_CHECK(it.second, where(i, comp), ": module ", s.path, " is also targeted by components[", it.first->second,
                   "] of the same peft_type; give them disjoint target_modules or layers_to_transform");
      }
    }
    for (size_t i = 0; i < slots.size(); ++i) {
      if (!tuner(c["components"][i])->targets_modules()) continue;
      as_component(pm, name, i, [&](const nlohmann::json& comp) { pm.inject_modules(name, *tuner(comp), comp, slots[i]); });
    }
  }

  nlohmann::json saved_config(const nlohmann::json& cfg) const override {
    nlohmann::json c = cfg;
    for (auto& comp : c["components"]) comp = tuner(comp)->saved_config(comp);
    return c;
  }
  int64_t second_run_start(const nlohmann::json& c) const override {
    int64_t start = -1;
    for (auto& comp : c["components"]) start = std::max(start, tuner(comp)->second_run_start(comp));
    return start;
  }
  void prepare_training_config(nlohmann::json& c, const TrainingSetup& setup) const override {
    if (!c.contains("components") || !c["components"].is_array()) return;  // validate() says so
    for (auto& comp : c["components"])
      if (comp.is_object() && comp.contains("peft_type") && comp["peft_type"].is_string())
        tuner(comp)->prepare_training_config(comp, setup);
  }
  torch::Tensor loss_term(const nlohmann::json& c, const LossTermInput& in) const override {
    torch::Tensor sum;
    for (auto& comp : c["components"]) {
      auto t = tuner(comp)->loss_term(comp, in);
      if (t.defined()) sum = sum.defined() ? sum + t : t;
    }
    return sum;
  }
  void on_step(PeftModel& pm, const std::string& name, int64_t step, bool before) const override {
    for (size_t i = 0; i < pm.adapter(name).config["components"].size(); ++i)
      as_component(pm, name, i, [&](const nlohmann::json& comp) { tuner(comp)->on_step(pm, name, step, before); });
  }

 private:
  static TunerPtr tuner(const nlohmann::json& comp) { return find_tuner(comp["peft_type"].get<std::string>()); }

  /// Runs f(component i's config) with the stored config of `name` temporarily set to that
  /// component's, since tuners read and record facts through pm.mutable_config(name); then tags
  /// the tensors the component created with its key namespace.
  template <class F>
  static void as_component(PeftModel& pm, const std::string& name, size_t i, F&& f) {
    auto& stored = pm.mutable_config(name);
    nlohmann::json whole = stored;
    stored = whole["components"][i];
    try {
      nlohmann::json comp = stored;
      with_context(where(i, comp), [&] { f(comp); });
    } catch (...) {
      stored = whole;
      throw;
    }
    whole["components"][i] = stored;
    stored = whole;
    const std::string ns = str_cat("components.", i);
    for (auto& kv : pm.tuner_layers())
      if (kv.second->has_adapter(name)) kv.second->set_namespace(name, ns);
    auto& input = pm.adapter(name).input;
    if (input && input->key_namespace.empty()) input->key_namespace = ns;
  }

  static void expand_s4(PeftModel& pm, nlohmann::json& c) {
    auto groups = s4_layer_groups(pm.model->dims().num_layers, c["s4_grouping"].get<std::string>());
    PEFT_CHECK(c["s4_groups"].size() == groups.size(), "adapter config: field 's4_groups' must list ", groups.size(),
               " groups, got ", c["s4_groups"].size());
    std::map<std::string, size_t> index;  // a strategy's config -> its component
    const size_t first = c["components"].size();  // explicit components stay ahead, as given
    for (size_t g = 0; g < groups.size(); ++g) {
      if (groups[g].empty()) continue;  // fewer layers than groups
      PEFT_CHECK(c["s4_groups"][g].is_array(), "adapter config: field 's4_groups': group ", g, " must be a list");
      for (auto& entry : c["s4_groups"][g]) {
        auto comp = component_of(entry);
        std::string key = comp.dump();
        auto it = index.find(key);
        if (it == index.end()) {
          it = index.emplace(key, c["components"].size()).first;
          c["components"].push_back(comp);
          auto type = comp.value("peft_type", std::string());
          if (!type.empty() && !find_tuner(type)->targets_modules()) continue;  // spans every layer
          c["components"].back()["layers_to_transform"] = nlohmann::json::array();
        }
        auto& comp_cfg = c["components"][it->second];
        if (!comp_cfg.contains("layers_to_transform")) continue;  // spans every layer
        for (auto l : groups[g]) comp_cfg["layers_to_transform"].push_back(l);  // groups are consecutive: ascending
      }
    }
    // Changes to a Linear's own output (BitFit's bias, LoRA's ΔW x) go first, so that an adapter
    // on the same module wraps them and reads the adapted sublayer output.
    auto rank = [](const nlohmann::json& comp) {
      auto t = comp.is_string() ? method_config(comp.get<std::string>())["peft_type"] : comp.value("peft_type", nlohmann::json(""));
      return t == "BITFIT" ? 0 : t == "LORA" ? 1 : 2;
    };
    std::vector<nlohmann::json> comps(c["components"].begin(), c["components"].end());
    std::stable_sort(comps.begin() + first, comps.end(), [&](const auto& a, const auto& b) { return rank(a) < rank(b); });
    c["components"] = comps;
    c["s4_groups"] = nullptr;  // saved explicitly, as components
  }
};

PEFT_REGISTER_TUNER(CompositeTuner);
PEFT_REGISTER_METHOD("composite", {{"peft_type", "COMPOSITE"}});
using Groups = nlohmann::json;
// S4's prefix and BitFit strategies (see above).
// Encoder-decoders: prefix tuning's "paper" layout (encoder, decoder and cross-attention prefixes).
const Groups kS4Prefix = {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 10}, {"prefix_layout", "paper"}};
const Groups kS4BitFit = {{"peft_type", "BITFIT"}, {"add_missing_biases", true}};
PEFT_REGISTER_METHOD("s4", {{"peft_type", "COMPOSITE"},
                            {"s4_grouping", "spindle"},
                            {"s4_groups", Groups::array({Groups::array({"houlsby", "lora"}),
                                                         Groups::array({"houlsby", kS4Prefix}),
                                                         Groups::array({"houlsby", kS4Prefix, kS4BitFit}),
                                                         Groups::array({kS4Prefix, kS4BitFit, "lora"})})}});

}  // namespace
}  // namespace peft
