// The extension API for writing a PEFT method (a tuner): what src/tuners/ builds on and a user
// of the library does not need (include/peft/peft.h is theirs). A method is
//   - a peft::Tuner registered by its peft_type (PEFT_REGISTER_TUNER) with the user-facing names
//     that select it (PEFT_REGISTER_METHOD), and a catalog card (src/tuners/catalog.cpp);
//   - for module tuners, a TunerLayer that wraps the slots (include/peft/module.h) the config
//     selects and owns the adapter's parameters under peft's names; wrap<L>(slot, ...) installs
//     it (or finds the one already there);
//   - for input tuners, an InputAdapter that changes the ModelInput (virtual tokens, prefixes).
// Its training behaviour (extra loss terms, calibration, schedules, optimizer resets) is a set of
// Tuner hooks with defaults that do nothing. docs/CONTRIBUTING.md walks through adding one.
#pragma once
#include <torch/types.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "peft/extend/config_fields.h"
#include "peft/model.h"
#include "peft/module.h"

namespace peft {

class PeftModel;
class TunerLayer;

/// peft's module selection (check_target_module_exists), resolved against one model.
struct TargetSelector {
  nlohmann::json target_modules;   // list of name suffixes | regex string (full match) | "all-linear"
  nlohmann::json exclude_modules;  // same forms, or null
  std::vector<int64_t> layers_to_transform;  // empty: every layer
  std::vector<std::string> layers_pattern;   // empty: the model's layers_pattern()
  /// Reads the fields from an adapter config; role names (e.g. "attn.q") in target_modules are
  /// translated through model.roles().
  static TargetSelector from_config(const nlohmann::json& cfg, const PretrainedModel& model,
                                    const std::vector<std::string>& default_roles);
  /// `path` is the module's name relative to the model ("model.layers.0.self_attn.q_proj").
  bool matches(const std::string& path, const Module* mod) const;
};

/// peft's name rule: `spec` a list of suffixes (path == s or path ends with "." + s) or a regex
/// string (full match); null matches nothing.
bool module_name_matches(const nlohmann::json& spec, const std::string& path);

/// What only the trainer knows when a run starts, for Tuner::prepare_training_config.
struct TrainingSetup {
  int64_t total_steps = 0;  // optimizer steps of the whole run
  /// The run's tokenizer (special tokens added, as a Hugging Face tokenizer call does); may be
  /// empty when there is none.
  std::function<std::vector<int64_t>(const std::string&)> encode;
};

/// One training forward as a tuner's loss term sees it (Tuner::loss_term, PeftModel::forward).
struct LossTermInput {
  const ModelInput& input;    // after the input adapters
  const ModelOutput& output;  // its task loss defined
  TaskType task;
  /// One more forward of the same input (a fresh random draw of dropout and routing).
  const std::function<ModelOutput()>& forward_again;
};

/// One PEFT method. Subclasses live in src/tuners/, one file per method family.
class Tuner {
 public:
  virtual ~Tuner() = default;
  /// peft's peft_type ("LORA", "IA3", ...) or ours for methods peft lacks.
  virtual std::string peft_type() const = 0;
  /// The method's config as a typed field table (include/peft/extend/config_fields.h): when a
  /// tuner declares one, defaults(), extension_keys() and the per-field type / range checks
  /// come from it, and `peft methods --fields` shows it. Empty: the tuner writes defaults()
  /// and its checks by hand.
  virtual std::vector<ConfigField> fields() const { return {}; }
  /// Every config field with its default, as the reference library writes adapter_config.json.
  /// Default: from fields() (an error when there is no table either).
  virtual nlohmann::json defaults() const;
  /// Checks a full config (defaults applied) beyond what the field table says (rules between
  /// fields); errors name the field.
  virtual void validate(const nlohmann::json& cfg) const {}
  /// check_fields over fields() (when there is a table), then validate(): what add_adapter runs.
  void check(const nlohmann::json& cfg) const;
  /// Roles targeted when target_modules is null (e.g. LoRA: attn.q, attn.v).
  virtual std::vector<std::string> default_roles() const { return {}; }
  /// Module tuners: wrap (or extend the wrapper at) `slot` for adapter `name`.
  virtual void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& cfg) const {}
  /// Input tuners and shared state (VeRA's projections): called once per add_adapter, before inject.
  virtual void add_global(PeftModel& pm, const std::string& name, const nlohmann::json& cfg) const {}
  virtual bool targets_modules() const { return true; }
  /// Module tuners: wraps the slots the config selects (default: PeftModel::inject_modules with
  /// this tuner); composites inject component by component.
  virtual void inject_all(PeftModel& pm, const std::string& name, const nlohmann::json& cfg) const;
  /// Config keys that are ours (training-time switches) and are left out of adapter_config.json
  /// so Python peft loads the file; they go to peft_cpp_config.json next to it.
  virtual std::vector<std::string> extension_keys() const;
  /// Every key a config of this method may hold: defaults()'s keys, then extension_keys(). The
  /// one list behind the unknown-key checks (a warning in add_adapter, an error in peft train,
  /// in composite components and in recipes).
  std::vector<std::string> config_keys() const;
  /// The config written to adapter_config.json (e.g. a PiSSA adapter is saved as the plain LoRA
  /// it is equivalent to on the unmodified base, with twice the rank).
  virtual nlohmann::json saved_config(const nlohmann::json& cfg) const { return cfg; }
  /// Model-wide work around an optimizer step (AdaLoRA's rank budget): `before` is true while
  /// gradients are still present (after backward, before the step), false after the step.
  virtual void on_step(PeftModel& pm, const std::string& name, int64_t step, bool before) const {}
  /// Methods that choose what trains from data (FISH, Child-Tuning_D): calibrate() runs once
  /// before training (Trainer::train, not on resume: the choice is saved with the adapter), with
  /// `next_loss` giving the loss of the next calibration batch (graph attached).
  virtual bool needs_calibration(const nlohmann::json& cfg) const { return false; }
  /// Methods that train twice (LT-SFT, Ansell et al. 2022, sec. 3.1: phase 2 is a second
  /// fine-tuning run): the step at which the second run starts, or -1. The Trainer gives each
  /// run its own learning-rate schedule; the tuner asks for a fresh optimizer through
  /// PeftModel::request_optimizer_reset() at the boundary.
  virtual int64_t second_run_start(const nlohmann::json& cfg) const { return -1; }
  virtual void calibrate(PeftModel& pm, const std::string& name, const std::function<torch::Tensor()>& next_loss) const {}
  /// Fills config fields that depend on the run before the adapter is added (AdaLoRA's
  /// total_step, prompt tuning's TEXT init ids); fields the user set are kept.
  virtual void prepare_training_config(nlohmann::json& cfg, const TrainingSetup& setup) const {}
  /// A term added to the task loss in training forwards (AdaMix's consistency loss); undefined
  /// for none. Called by PeftModel::forward for each active adapter.
  virtual torch::Tensor loss_term(const nlohmann::json& cfg, const LossTermInput& in) const { return {}; }
};
using TunerPtr = std::shared_ptr<const Tuner>;

bool register_tuner(TunerPtr tuner);
/// By peft_type (case-insensitive); throws listing the known types.
TunerPtr find_tuner(const std::string& peft_type);
std::vector<std::string> registered_tuners();
/// Registers a user-facing method name as a base config (tuner files do this for their presets).
bool register_method(const std::string& name, nlohmann::json base);

/// The layer under every TunerLayer wrapper of `l` (`l` itself when it is none).
Layer* innermost(Layer* l);
/// innermost(l) as a Linear, or nullptr when the wrapped layer is none.
Linear* innermost_linear(Layer* l);

/// The rows of a mixed-adapter batch (PeftModel::forward with row_adapters; peft's
/// adapter_names=): for each adapter named, the batch rows that use it. Rows named "__base__"
/// appear in no group and see the plain model.
struct RowGroups {
  int64_t batch = 0;
  std::vector<std::pair<std::string, torch::Tensor>> rows;  // adapter -> row indices [n] int64
};

/// Base of every slot wrapper (peft's BaseTunerLayer). Holds the wrapped `base_layer` (a slot,
/// so wrappers stack) and per-adapter parameters registered under peft's names:
/// add_param(a, "lora_A.weight", t) registers `lora_A.<a>.weight`; add_param(a, "ia3_l", t)
/// registers `ia3_l.<a>`. Saved keys drop the `.<a>` part.
class TunerLayer : public Layer {
 public:
  explicit TunerLayer(LayerPtr base);
  LayerPtr base_layer;

  /// Output of the wrapped layer (used by every forward).
  torch::Tensor base_forward(const torch::Tensor& x) { return base_layer->forward(x); }
  /// The innermost Linear under this wrapper (errors if the slot is not a Linear).
  Linear& base_linear() const;

  torch::Tensor add_param(const std::string& adapter, const std::string& key, torch::Tensor value, bool trainable = true);
  /// Registers a non-trainable tensor (frozen projections, buffers) that is saved with the adapter.
  torch::Tensor add_frozen(const std::string& adapter, const std::string& key, torch::Tensor value) {
    return add_param(adapter, key, std::move(value), false);
  }
  torch::Tensor& param(const std::string& adapter, const std::string& key);
  bool has_param(const std::string& adapter, const std::string& key) const;
  /// (saved key suffix, tensor) of one adapter, e.g. ("lora_A.weight", A).
  virtual std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors(const std::string& adapter) const;
  /// Tensors of `adapter` that train (requires_grad when the adapter is active).
  virtual std::vector<torch::Tensor> trainable_tensors(const std::string& adapter) const;
  /// Entries of `adapter` that train (requires_grad tensors; sparse methods train a masked
  /// subset of a dense tensor and count the subset).
  virtual int64_t trainable_numel(const std::string& adapter) const;
  /// Layers whose saved form differs from their tensors (a sparse delta kept dense while
  /// training) take their saved tensors (key suffix -> tensor) here and return true; by default
  /// the tensors are copied into adapter_tensors() with a shape check.
  virtual bool load_saved(const std::string& adapter, const TensorMap& saved, const std::string& source) { return false; }
  bool has_adapter(const std::string& a) const { return adapters_.count(a) > 0; }
  std::vector<std::string> adapter_names() const { return std::vector<std::string>(adapters_.begin(), adapters_.end()); }
  /// Key namespace of composites (src/tuners/composite.cpp): set_namespace gives every tensor of
  /// `adapter` that has none yet the prefix `ns` ("components.1"); saved keys start with it.
  void set_namespace(const std::string& adapter, const std::string& ns);
  std::string key_namespace(const std::string& adapter, const std::string& key) const;

  /// The adapters that take part in forward (PeftModel::set_adapter) and those merged into the
  /// base weight; the state itself is PeftModel's to change.
  const std::vector<std::string>& active_adapters() const { return active; }
  const std::set<std::string>& merged_adapters() const { return merged; }
  bool is_merged(const std::string& a) const { return merged.count(a) > 0; }
  /// True during a mixed-adapter forward (PeftModel::forward with row_adapters).
  bool in_mixed_batch() const { return row_groups != nullptr; }
  double scale_of(const std::string& a) const {
    auto it = user_scale.find(a);
    return it == user_scale.end() ? 1.0 : it->second;
  }
  /// Adapters that should act in this forward: active, not merged, not disabled; none during a
  /// mixed-adapter forward (row_groups set), where each adapter acts on its own rows only.
  std::vector<std::string> live_adapters() const;

  /// Whether this layer can compute adapter `a` on its own rows of a batch. PeftModel refuses a
  /// mixed-adapter batch that names an adapter some layer cannot compute that way.
  virtual bool supports_row_adapters(const std::string& a) const { return false; }
  /// Removes adapter `a`'s tensors and state (PeftModel::delete_adapter).
  virtual void remove_adapter(const std::string& a);
  /// Whether this layer takes its input in the base's half dtype (bfloat16 activations on a
  /// bfloat16 base, as transformers runs one) and returns its output in the input's dtype, its
  /// own products in float32 (peft's autocast_adapter_dtype). PeftModel keeps half activations
  /// only when every layer holding a live adapter says so (docs/PRECISION.md); the default keeps
  /// the model's activations float32 for this layer's sake.
  virtual bool keeps_half_activations() const { return false; }

  /// The dense update ΔW [out, in] of adapter `a` (scales applied) for methods that have one;
  /// undefined otherwise. The default merge()/unmerge() add/subtract it to the base weight.
  virtual torch::Tensor delta_weight(const std::string& a) { return {}; }
  /// Folds adapter `a` into the base weight / restores it. Default: through delta_weight(),
  /// or an error naming the method when it has none.
  virtual bool can_merge() const { return false; }
  virtual void merge(const std::string& a);
  virtual void unmerge(const std::string& a);
  /// Regulariser added to the loss while training (AdaLoRA's orthogonality term): returns the
  /// weighted sum of this layer's terms and adds their number to *count; the model averages.
  virtual torch::Tensor extra_loss(const std::string& a, int64_t* count) { return {}; }
  /// Called after each optimizer step with the global step (Delta-LoRA, AdaLoRA budget).
  virtual void after_step(const std::string& a, int64_t step) {}
  /// Called after load_adapter_state_dict filled adapter `a` (consistency checks; `source` for errors).
  virtual void after_load(const std::string& a, const std::string& source) {}
  /// Called before the optimizer step, while gradients are present (AdaLoRA importance).
  virtual void before_step(const std::string& a, int64_t step) {}
  /// Method name for the trainable-parameter report.
  virtual std::string method() const = 0;

 protected:
  friend class PeftModel;
  /// Set by PeftModel: the active adapters with a user scale each, whether adapters are
  /// disabled, those merged, and for the duration of one mixed-adapter forward its row groups
  /// (null otherwise).
  std::vector<std::string> active;
  std::map<std::string, double> user_scale;
  bool disabled = false;
  std::set<std::string> merged;
  std::shared_ptr<const RowGroups> row_groups;

  std::set<std::string> adapters_;
  using Term = std::function<torch::Tensor(const std::string& adapter, const torch::Tensor& x)>;
  /// base(x) + Σ_a term(a, x) for additive methods (LoRA, VeRA, LoHa, ...): over the live
  /// adapters, or in a mixed-adapter batch over each adapter's own rows: gather the rows, one
  /// product per adapter, add back at those rows (the grouped form of S-LoRA / Punica).
  torch::Tensor additive_forward(const torch::Tensor& x, const Term& term);
  /// Mixed-adapter batches for multiplicative methods (IA3): [B, 1, ..., n] factors shaped like
  /// `x` ([B, ..., n]), value(a) at the rows of each adapter (undefined: 1), ones elsewhere;
  /// undefined when no group has a value.
  torch::Tensor row_factors(const torch::Tensor& x, const std::function<torch::Tensor(const std::string&)>& value) const;
  /// The row indices of adapter `a` in the current mixed batch (undefined when it has none),
  /// after checking that `x` has the batch's row count.
  torch::Tensor rows_of(const std::string& a, const torch::Tensor& x) const;

 private:
  struct Entry {
    torch::Tensor tensor;
    bool trainable;
    std::string ns;  // key namespace ("" outside composites)
  };
  std::map<std::pair<std::string, std::string>, Entry> params_;
  std::map<std::string, std::shared_ptr<torch::nn::Module>> containers_;
};

/// Input tuners (prompt, prefix, p-tuning): change the model input; parameters registered on
/// this module under the names peft saves (`prompt_embeddings`).
class InputAdapter : public torch::nn::Module {
 public:
  virtual void apply(PretrainedModel& model, ModelInput& in, KVCache& storage) = 0;
  /// Tensors saved in adapter_model.safetensors (peft key -> tensor).
  virtual TensorMap saved_tensors() const = 0;
  virtual void load_saved(const TensorMap& t, const std::string& source) = 0;
  virtual std::string method() const = 0;
  /// False for holders of shared tensors that leave the input alone (VeRA's projections).
  virtual bool changes_input() const { return true; }
  /// Whether rows of a mixed-adapter batch can use this adapter while other rows do not
  /// (adapters that change the input: through row_prompt()).
  virtual bool supports_row_adapters() const { return !changes_input(); }
  /// What a soft-prompt adapter puts in front of each of its rows in a mixed-adapter batch
  /// (src/tuners/row_prompts.cpp assembles them): virtual-token embeddings [n, hidden] placed
  /// before the token embeddings, or a prefix of keys and values per layer [kv_heads, n,
  /// head_dim]; nullopt when the adapter cannot act on some rows only. Graph attached in training.
  struct RowPrompt {
    torch::Tensor embeds;
    std::vector<torch::Tensor> k, v;
    int64_t length() const { return embeds.defined() ? embeds.size(0) : k.empty() ? 0 : k[0].size(1); }
  };
  virtual std::optional<RowPrompt> row_prompt() { return std::nullopt; }
  /// Prefix of the saved keys inside a composite ("components.2"), empty otherwise.
  std::string key_namespace;
};

/// The wrapper of type L at `slot` for one more adapter: the L already there (a second adapter
/// of the same method), or a new L(slot's layer, ctor_args...). `add(L&)` registers the adapter's
/// tensors; a new wrapper is put into the slot only after `add` returned, so a refused adapter
/// leaves the model as it was. Returns the wrapper.
template <class L, class Add, class... Args>
std::shared_ptr<L> wrap(const SlotRef& slot, Add&& add, Args&&... ctor_args) {
  auto cur = slot.get();
  auto layer = std::dynamic_pointer_cast<L>(cur);
  if (!layer) layer = std::make_shared<L>(cur, std::forward<Args>(ctor_args)...);
  add(*layer);
  if (layer != cur) slot.parent->replace_slot(slot.name, layer);
  return layer;
}

}  // namespace peft

#define PEFT_TUNER_CAT2(a, b) a##b
#define PEFT_TUNER_CAT(a, b) PEFT_TUNER_CAT2(a, b)
#define PEFT_REGISTER_METHOD(name, ...) \
  static const bool PEFT_TUNER_CAT(peft_method_reg_, __LINE__) = ::peft::register_method(name, nlohmann::json(__VA_ARGS__))
#define PEFT_REGISTER_TUNER(cls) \
  static const bool PEFT_TUNER_CAT(peft_tuner_reg_, __LINE__) = ::peft::register_tuner(std::make_shared<cls>())
