// Tuners: the one model-agnostic mechanism that puts trainable parameters into a frozen model.
//
// A method (LoRA, IA3, a bottleneck adapter, prompt tuning, ...) is a peft::Tuner registered by
// its peft_type. A PeftModel wraps a PretrainedModel and holds named adapters; add_adapter()
// asks the tuner to act on the model in one of two ways:
//   - module tuners wrap *slots* (include/peft/module.h) picked by peft's targeting rules
//     (target_modules suffixes or regex, exclude_modules, layers_to_transform/layers_pattern)
//     with a TunerLayer that owns the adapter's parameters (LoRA around q_proj, IA3 scaling an
//     activation, an adapter after an MLP, a mask over a weight);
//   - input tuners (prompt/prefix tuning) transform the ModelInput before the base forward
//     (virtual tokens in inputs_embeds, key/value prefixes in the KV cache).
// No tuner knows the model family: names come from the checkpoint, defaults from roles().
// This header is the user's side (PeftModel, method_config, the catalog); writing a method uses
// include/peft/extend/tuner.h (Tuner, TunerLayer, InputAdapter, wrap, the registration macros).
//
//   auto pm = std::make_shared<peft::PeftModel>(peft::load_model("assets/stories260K"));
//   pm->add_adapter("default", peft::method_config("lora", {{"r", 8}}));
//   ... train pm->trainable_parameters() ...
//   pm->save_adapter("out/adapter");                 // Python peft's format
#pragma once
#include <torch/types.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "peft/extend/tuner.h"
#include "peft/model.h"
#include "peft/module.h"

namespace peft {

class PeftModel;

/// A method name as users type it ("lora", "rslora", "dora", "pissa", "olora", "lora-fa",
/// "delta-lora", "dylora", "vera", "loha", "lokr", "adalora", "ia3", ...) merged with `overrides`
/// into a config that has peft_type set.
nlohmann::json method_config(const std::string& method, const nlohmann::json& overrides = nlohmann::json::object());
/// Names accepted by method_config().
std::vector<std::string> method_names();

/// What `peft methods` says of a method name: its family in the survey's taxonomy
/// ("additive", "partial", "reparameterized", "hybrid", "unified") and its paper.
struct MethodCard {
  std::string name, family, paper;
};
/// Every card (src/tuners/catalog.cpp); nullptr for a name without one.
std::vector<MethodCard> method_cards();
const MethodCard* method_card(const std::string& name);

/// Counts like peft's print_trainable_parameters, plus a per-method breakdown.
struct TrainableReport {
  int64_t trainable = 0, total = 0;
  std::map<std::string, int64_t> by_method;  // "lora" -> n, "modules_to_save" -> n
  double percent() const { return total ? 100.0 * trainable / total : 0.0; }
  std::string to_string() const;
};

struct AdapterEntry {
  std::string name;
  TunerPtr tuner;
  nlohmann::json config;  // full (defaults applied)
  std::vector<std::string> targeted;  // module paths it wraps
  std::shared_ptr<InputAdapter> input;  // input tuners
};

class PeftModel : public Module {
 public:
  explicit PeftModel(ModelPtr base);
  ModelPtr model;  // the base model, registered as `base_model.model`

  /// Adds adapter `name` described by `cfg` (peft_type + fields; defaults filled in, unknown
  /// keys warned about). Freezes everything but the active adapter's parameters.
  void add_adapter(const std::string& name, nlohmann::json cfg);
  /// Loads an adapter folder (adapter_config.json + adapter_model.safetensors, Python peft's
  /// format) as adapter `name`; every tensor must match the injected shape.
  void load_adapter(const std::string& dir, const std::string& name = "default", bool trainable = false);
  /// Writes adapter `name` (default: the first) in Python peft's format (atomic writes).
  void save_adapter(const std::string& dir, const std::string& name = "") const;

  /// Makes `names` the active adapters (with scales; empty scale = 1) and the only trainable ones.
  void set_adapter(const std::vector<std::string>& names);
  void set_adapter(const std::string& name) { set_adapter(std::vector<std::string>{name}); }
  void set_scale(const std::string& name, double scale);
  /// Keeps an active adapter frozen: it acts in forward but does not train (AdapterHub's Stack
  /// for MAD-X: a task adapter trains on top of a fixed language adapter).
  void set_frozen(const std::string& name, bool frozen = true);
  void disable_adapters(bool disabled = true);
  const std::vector<std::string>& active_adapters() const { return active_; }

  /// Merges the active adapters into the base weights (errors for methods that cannot).
  /// safe_merge (peft's): every merged weight is checked for NaN/Inf; a broken adapter is a
  /// peft::Error naming it and the module, and every weight is restored bit for bit (this keeps a
  /// copy of each merged module's weights until the merge is done).
  void merge(bool safe_merge = false);
  void unmerge();
  /// Merges, removes every wrapper, returns the plain base model (a PretrainedModel that
  /// save_pretrained writes as a Hugging Face checkpoint). The PeftModel is unusable after
  /// (unless a safe merge refused: then nothing changed).
  ModelPtr merge_and_unload(bool safe_merge = false);

  ModelOutput forward(const ModelInput& in);
  /// Mixed-adapter batch (peft's `adapter_names=`): row i of the batch uses adapter
  /// row_adapters[i] alone, "__base__" the plain model; one forward for the whole batch. The
  /// adapters must be loaded (not necessarily active) and unmerged; works with in.cache,
  /// attention_mask and position_ids. Errors name an unknown adapter, a row count that does not
  /// match, or a method that cannot act per row (nothing is changed then). Empty: forward(in).
  ModelOutput forward(const ModelInput& in, const std::vector<std::string>& row_adapters);
  /// The name a mixed-adapter batch uses for rows without adapter (peft's "__base__").
  static constexpr const char* kBaseRow = "__base__";
  /// Removes adapter `name` (its tensors, wrappers left without adapters are unwrapped). Errors
  /// when it is merged.
  void delete_adapter(const std::string& name);
  /// Parameters that train: the active adapters' (and their modules_to_save copies).
  std::vector<torch::Tensor> trainable_parameters() const;
  /// Named trainable parameters (full names, e.g. base_model.model....lora_A.default.weight).
  std::vector<std::pair<std::string, torch::Tensor>> named_trainable_parameters() const;
  TrainableReport trainable_report() const;
  /// Sum of the active adapters' regularisers (undefined when none).
  torch::Tensor extra_loss();
  void before_step(int64_t step);
  void after_step(int64_t step);
  /// Tuner::on_step asks that the optimizer restart (Adam moments and steps dropped) after the
  /// current step; the Trainer takes the request once (take_optimizer_reset).
  void request_optimizer_reset() { optimizer_reset_ = true; }
  bool take_optimizer_reset() { return std::exchange(optimizer_reset_, false); }
  /// The latest Tuner::second_run_start of the active adapters (-1: one run).
  int64_t second_run_start() const;
  /// True when an active adapter chooses its trainable entries from data (Tuner::calibrate).
  bool needs_calibration() const;
  /// Runs Tuner::calibrate for those adapters, in eval mode (no dropout), then clears gradients.
  void calibrate(const std::function<torch::Tensor()>& next_loss);

  /// Adapter tensors under the keys peft saves (adapter name stripped).
  TensorMap adapter_state_dict(const std::string& name) const;
  void load_adapter_state_dict(const std::string& name, const TensorMap& tensors, const std::string& source);

  std::vector<std::pair<std::string, TunerLayer*>> tuner_layers() const;  // model-relative path
  const std::map<std::string, AdapterEntry>& adapters() const { return adapters_; }
  const AdapterEntry& adapter(const std::string& name) const;
  /// The stored config of an adapter, for tuners that record facts found during injection.
  nlohmann::json& mutable_config(const std::string& name) { return adapters_.at(name).config; }
  std::string first_adapter() const;
  /// True while load_adapter() builds an adapter whose tensors come from a file: tuners skip
  /// initialisations that would change the base (PiSSA, OLoRA).
  bool loading() const { return loading_; }
  /// Input tuners and shared tensors register here (add_global).
  void set_input_adapter(const std::string& name, std::shared_ptr<InputAdapter> ia);
  /// The slots `tuner` with config `cfg` selects (peft's targeting rules; wrappers' internals and
  /// modules_to_save copies skipped), in named_modules() order.
  std::vector<SlotRef> select_slots(const Tuner& tuner, const nlohmann::json& cfg) const;
  /// Wraps `slots` (default: select_slots) with `tuner` for adapter `name` and records them as
  /// targeted; errors listing some module names when nothing matched.
  void inject_modules(const std::string& name, const Tuner& tuner, const nlohmann::json& cfg);
  void inject_modules(const std::string& name, const Tuner& tuner, const nlohmann::json& cfg,
                      const std::vector<SlotRef>& slots);

 private:
  struct RowGroupsScope;  // sets the row groups on every layer for one mixed-adapter forward
  // Whether a forward of these adapters may keep the base's half-precision activations: each has
  // tuner layers only (no input adapter), and each of its layers keeps_half_activations().
  bool half_activations_for(const std::vector<std::string>& adapters) const;
  bool loading_ = false;
  void refresh_trainable();
  std::shared_ptr<torch::nn::Module> base_model_;
  std::map<std::string, AdapterEntry> adapters_;
  std::vector<std::string> order_;   // insertion order
  std::vector<std::string> active_;
  std::set<std::string> frozen_;
  bool disabled_ = false;
  bool optimizer_reset_ = false;
};
using PeftModelPtr = std::shared_ptr<PeftModel>;

/// Reads and completes an adapter_config.json: defaults for missing fields, a warning on stderr
/// for unknown ones (newer peft versions), errors naming the file and field.
nlohmann::json read_adapter_config(const std::string& dir);

/// S4 layer groups (Chen et al. 2023, "Parameter-Efficient Fine-Tuning Design Spaces", sec. 4):
/// layers 0..num_layers-1 split into 4 consecutive groups with sizes in proportion spindle
/// 1:2:2:1, uniform, increasing 1:2:3:4 or decreasing 4:3:2:1 (rounded; empty when too few layers).
std::vector<std::vector<int64_t>> s4_layer_groups(int64_t num_layers, const std::string& grouping);

/// Closed-form helpers used by several tuners (and tests).
/// Kaiming-uniform with a = sqrt(5) as nn.Linear/peft initialise: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch::Tensor kaiming_uniform(std::vector<int64_t> shape, int64_t fan_in);

}  // namespace peft
