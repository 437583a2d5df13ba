// PeftModel: named adapters over one frozen base; injection, freezing, merge, peft's file format.
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "peft/error.h"
#include "peft/log.h"
#include "peft/io.h"
#include "peft/tuner.h"
#include "peft/precision.h"
#include "io/adapter_config.h"
#include "io/memory_budget.h"
#include "io/suggest.h"
#include "tuners/row_prompts.h"
#include "models/quant_linear.h"
#include "tuners/default_targets.h"

namespace peft {
namespace {

/// modules_to_save (peft's ModulesToSaveWrapper): a fully trainable copy of a module per
/// adapter, used in place of the original while that adapter is active.
class ModulesToSave : public TunerLayer {
 public:
  explicit ModulesToSave(LayerPtr base) : TunerLayer(std::move(base)) {
    copies_ = register_module("modules_to_save", std::make_shared<torch::nn::Module>());
  }
  void add(const std::string& a) {
    if (copies.count(a)) return;
    auto c = base_layer->clone_layer();
    auto params = base_layer->parameters();
    if (!params.empty()) c->to(params[0].device(), trainable_dtype(params[0].scalar_type()));  // float32 on a half base
    copies[a] = copies_->register_module(a, c);
    adapters_.insert(a);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    if (row_groups) {  // mixed-adapter batch: each adapter's rows through its copy
      auto y = base_forward(x);
      for (auto& g : row_groups->rows)
        if (copies.count(g.first)) {
          auto idx = rows_of(g.first, x);
          y = y.index_copy(0, idx, copies[g.first]->forward(x.index_select(0, idx)).to(y.scalar_type()));
        }
      return y;
    }
    if (!disabled)
      for (auto& a : active)
        if (copies.count(a)) return copies[a]->forward(x);
    return base_forward(x);
  }
  bool supports_row_adapters(const std::string&) const override { return true; }
  void remove_adapter(const std::string& a) override {
    TunerLayer::remove_adapter(a);
    if (copies.erase(a)) copies_->unregister_module(a);
  }
  std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors(const std::string& a) const override {
    std::vector<std::pair<std::string, torch::Tensor>> out;
    auto it = copies.find(a);
    if (it != copies.end())
      for (auto& p : it->second->named_parameters()) out.emplace_back(p.key(), p.value());
    return out;
  }
  std::vector<torch::Tensor> trainable_tensors(const std::string& a) const override {
    std::vector<torch::Tensor> out;
    for (auto& kv : adapter_tensors(a)) out.push_back(kv.second);
    return out;
  }
  bool can_merge() const override { return true; }
  void merge(const std::string&) override {}  // the copy is used whenever active
  void unmerge(const std::string&) override {}
  std::string method() const override { return "modules_to_save"; }
  std::map<std::string, LayerPtr> copies;

 private:
  std::shared_ptr<torch::nn::Module> copies_;
};

bool internal_path(const std::string& p) {
  return p.find("base_layer") != std::string::npos || p.find("modules_to_save") != std::string::npos;
}

/// peft sets fan_in_fan_out from the type of each target layer it creates (true for a Conv1D,
/// false for an nn.Linear, with a warning when the config said otherwise), so the value it saves
/// is that of the last target. Our Linear knows its layout, so the field has no effect here.
void record_fan_in_fan_out(PeftModel& pm, const std::string& name) {
  auto& cfg = pm.mutable_config(name);
  const auto& targeted = pm.adapter(name).targeted;
  if (!cfg.contains("fan_in_fan_out") || targeted.empty()) return;
  for (auto& ref : find_slots(*pm.model)) {
    if (ref.path != targeted.back()) continue;
    if (auto* lin = innermost_linear(ref.get().get())) cfg["fan_in_fan_out"] = lin->conv1d;
    return;
  }
}

}  // namespace

PeftModel::PeftModel(ModelPtr base) : model(std::move(base)) {
  PEFT_CHECK(model, "PeftModel: no base model");
  base_model_ = register_module("base_model", std::make_shared<torch::nn::Module>());
  base_model_->register_module("model", model);
  for (auto& p : model->parameters()) p.set_requires_grad(false);
  train(model->is_training());  // the wrapper follows the base's train/eval mode
}

void PeftModel::set_input_adapter(const std::string& name, std::shared_ptr<InputAdapter> ia) {
  auto& e = adapters_.at(name);
  e.input = ia;
  register_module("input_" + name, ia);
}

void PeftModel::add_adapter(const std::string& name, nlohmann::json cfg) {
  PEFT_CHECK(!name.empty() && name.find('.') == std::string::npos, "adapter name '", name,
             "' must be non-empty and without dots");
  PEFT_CHECK(!adapters_.count(name), "adapter '", name, "' already exists");
  PEFT_CHECK(cfg.is_object() && cfg.contains("peft_type") && cfg["peft_type"].is_string(),
             "adapter config: field 'peft_type' is missing");
  auto tuner = find_tuner(cfg["peft_type"].get<std::string>());
  nlohmann::json full = tuner->defaults();
  const auto fields = tuner->config_keys();
  for (auto& kv : cfg.items()) {
    bool known = std::find(fields.begin(), fields.end(), kv.key()) != fields.end();
    if (!known)  // a key of a newer peft version, or a typo
      log_warning("adapter config: unknown field '", kv.key(), "' for ", tuner->peft_type(), " ignored",
                  did_you_mean(kv.key(), fields));
    else
      full[kv.key()] = kv.value();
  }
  full["peft_type"] = tuner->peft_type();
  if (full.contains("task_type") && full["task_type"].is_null()) full["task_type"] = task_type_name(model->task());
  tuner->check(full);
  // peft resolves 'all-linear' when the adapter is created, before anything looks at the model.
  if (tuner->targets_modules() && full.contains("target_modules") && full["target_modules"] == "all-linear")
    full["target_modules"] = all_linear_targets(*model);

  AdapterEntry e{name, tuner, full, {}, nullptr};
  adapters_[name] = e;
  order_.push_back(name);
  try {
    tuner->add_global(*this, name, full);
    // The stored config: add_global may have resolved targeting fields (bottleneck placements).
    // It keeps the target list actually used (defaults and role names resolved), as peft saves it.
    if (tuner->targets_modules()) {
      auto& stored = adapters_[name].config;
      if (stored.contains("target_modules"))
        stored["target_modules"] = resolved_target_modules(stored, *model, tuner->default_roles());
      tuner->inject_all(*this, name, nlohmann::json(stored));
      record_fan_in_fan_out(*this, name);
    }
    // modules_to_save: trainable copies (peft adds the classification head itself for SEQ_CLS).
    // From the stored config (add_global may have set it).
    auto mts = adapters_[name].config.value("modules_to_save", nlohmann::json());
    // Configs without the field (prompt learning) get the classification head, as peft's
    // PeftModelForSequenceClassification adds it for every method.
    if (!adapters_[name].config.contains("modules_to_save") && model->task() == TaskType::SeqCls) {
      auto roles = model->roles();
      if (roles.count(role::kHead)) mts = nlohmann::json::array({roles[role::kHead]});
    }
    if (mts.is_array() && !mts.empty()) {
      bool any = false;
      for (auto& ref : find_slots(*model)) {
        if (internal_path(ref.path)) continue;
        for (auto& t : mts) {
          if (!module_name_matches(nlohmann::json::array({t}), ref.path)) continue;
          auto cur = ref.get();
          PEFT_CHECK(!cur->parameters().empty(), "adapter '", name, "': modules_to_save names ", ref.path,
                     ", which has no parameters of its own to train (a view or an activation); name its layers instead");
          auto w = std::dynamic_pointer_cast<ModulesToSave>(cur);
          if (!w) {
            w = std::make_shared<ModulesToSave>(cur);
            ref.parent->replace_slot(ref.name, w);
          }
          w->add(name);
          any = true;
        }
      }
      PEFT_CHECK(any, "adapter '", name, "': modules_to_save ", mts.dump(), " matched no module");
    }
  } catch (...) {
    adapters_.erase(name);
    order_.pop_back();
    throw;
  }
  if (active_.empty()) active_ = {name};
  set_adapter(active_);
  train(is_training());  // new wrapper modules take the model's mode (eval: no dropout)
}

std::vector<SlotRef> PeftModel::select_slots(const Tuner& tuner, const nlohmann::json& cfg) const {
  auto sel = TargetSelector::from_config(cfg, *model, tuner.default_roles());
  std::vector<SlotRef> out;
  for (auto& ref : find_slots(*model))
    if (!internal_path(ref.path) && sel.matches(ref.path, ref.get().get())) out.push_back(ref);
  return out;
}

void PeftModel::inject_modules(const std::string& name, const Tuner& tuner, const nlohmann::json& cfg) {
  inject_modules(name, tuner, cfg, select_slots(tuner, cfg));
}

void PeftModel::inject_modules(const std::string& name, const Tuner& tuner, const nlohmann::json& cfg,
                               const std::vector<SlotRef>& slots) {
  if (slots.empty()) {
    std::string some;
    int n = 0;
    for (auto& ref : find_slots(*model))
      if (!internal_path(ref.path) && n++ < 12) some += " " + ref.path;
    auto sel = TargetSelector::from_config(cfg, *model, tuner.default_roles());
    fail("adapter '", name, "': target_modules ", sel.target_modules.dump(),
         " matched no module of the model (some module names:", some, ")");
  }
  for (auto& ref : slots) {
    tuner.inject(*this, ref, name, cfg);
    adapters_.at(name).targeted.push_back(ref.path);
  }
}

const AdapterEntry& PeftModel::adapter(const std::string& name) const {
  auto it = adapters_.find(name);
  PEFT_CHECK(it != adapters_.end(), "no adapter named '", name, "'");
  return it->second;
}

std::string PeftModel::first_adapter() const {
  PEFT_CHECK(!order_.empty(), "the model has no adapter");
  return order_.front();
}

std::vector<std::pair<std::string, TunerLayer*>> PeftModel::tuner_layers() const {
  std::vector<std::pair<std::string, TunerLayer*>> out;
  for (auto& ref : find_slots(*model))
    if (auto* t = dynamic_cast<TunerLayer*>(ref.get().get())) out.emplace_back(ref.path, t);
  return out;
}

void PeftModel::set_adapter(const std::vector<std::string>& names) {
  for (auto& n : names) adapter(n);
  active_ = names;
  for (auto& kv : tuner_layers()) {
    kv.second->active = names;
    kv.second->disabled = disabled_;
  }
  refresh_trainable();
}

void PeftModel::set_scale(const std::string& name, double scale) {
  adapter(name);
  for (auto& kv : tuner_layers()) kv.second->user_scale[name] = scale;
}

void PeftModel::set_frozen(const std::string& name, bool frozen) {
  adapter(name);
  if (frozen) frozen_.insert(name);
  else frozen_.erase(name);
  refresh_trainable();
}

void PeftModel::disable_adapters(bool d) {
  disabled_ = d;
  for (auto& kv : tuner_layers()) kv.second->disabled = d;
}

void PeftModel::refresh_trainable() {
  for (auto& p : parameters()) p.set_requires_grad(false);
  for (auto& t : trainable_parameters()) t.set_requires_grad(true);
  // Trainable tensors of a half-precision base (BitFit's biases, modules_to_save copies, prompt
  // tables) train in float32, with float32 gradients and optimizer state.
  promote_trainable_to_float32(*this);
}

std::vector<std::pair<std::string, torch::Tensor>> PeftModel::named_trainable_parameters() const {
  std::set<const void*> want;
  std::vector<std::string> training;
  for (auto& a : active_)
    if (!frozen_.count(a)) training.push_back(a);
  for (auto& kv : tuner_layers())
    for (auto& a : training)
      for (auto& t : kv.second->trainable_tensors(a)) want.insert(t.unsafeGetTensorImpl());
  for (auto& a : training) {
    auto it = adapters_.find(a);
    if (it != adapters_.end() && it->second.input)
      for (auto& t : it->second.input->parameters()) want.insert(t.unsafeGetTensorImpl());
  }
  // A tensor registered twice (LoRA's trainable biases: the base's own, held by the adapter too)
  // is listed once, under its first (base model) name.
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& p : named_parameters())
    if (want.erase(p.value().unsafeGetTensorImpl())) out.emplace_back(p.key(), p.value());
  return out;
}

std::vector<torch::Tensor> PeftModel::trainable_parameters() const {
  std::vector<torch::Tensor> out;
  for (auto& kv : named_trainable_parameters()) out.push_back(kv.second);
  return out;
}

TrainableReport PeftModel::trainable_report() const {
  TrainableReport r;
  std::set<const void*> seen;  // tensors registered twice count once
  for (auto& p : parameters()) {
    if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;
    r.total += p.numel();
    if (p.requires_grad()) r.trainable += p.numel();
  }
  // A quantized Linear's weight is not a parameter tensor; it counts with its logical size (as
  // peft counts a Params4bit twice its packed bytes).
  for (auto& m : model->modules(/*include_self=*/false))
    if (auto* q = as_quantized(dynamic_cast<const Layer*>(m.get()))) r.total += q->numel();
  for (auto& kv : tuner_layers())
    for (auto& a : active_) {
      int64_t dense = 0, counted = kv.second->trainable_numel(a);
      for (auto& t : kv.second->trainable_tensors(a))
        if (t.requires_grad()) dense += t.numel();
      r.by_method[kv.second->method()] += counted;
      r.trainable -= dense - counted;  // a sparse method trains a subset of its dense tensors
    }
  for (auto& a : active_) {
    auto& e = adapter(a);
    if (e.input)
      for (auto& t : e.input->parameters())
        if (t.requires_grad()) r.by_method[e.input->method()] += t.numel();
  }
  return r;
}

bool PeftModel::half_activations_for(const std::vector<std::string>& names) const {
  if (names.empty()) return false;  // the plain base keeps float32 activations
  auto layers = tuner_layers();
  for (auto& a : names) {
    const auto& e = adapters_.at(a);
    if (e.input && e.input->changes_input()) return false;  // soft prompts, prefixes (VeRA's shared projections pass)
    int64_t holding = 0;
    for (auto& [path, t] : layers) {
      if (!t->has_adapter(a) || t->is_merged(a)) continue;
      if (!t->keeps_half_activations()) return false;
      ++holding;
    }
    if (holding == 0) return false;  // a method acting outside tuner layers (BitFit, hooks)
  }
  return true;
}

ModelOutput PeftModel::forward(const ModelInput& in_) {
  const HalfActivations half(!disabled_ && half_activations_for(active_));
  ModelInput in = in_;
  KVCache storage;
  if (!disabled_)
    for (auto& a : active_) {
      auto& e = adapter(a);
      if (e.input) e.input->apply(*model, in, storage);
    }
  // The tuners' loss terms (Tuner::loss_term) see training forwards with labels; not with a
  // caller's KV cache, which the first forward extends.
  const bool terms = is_training() && in.labels.defined() && !in_.cache && !disabled_;
  KVCache prefilled;  // an input adapter's pre-filled cache, before the first forward extends it
  if (terms) prefilled = storage;
  ModelOutput out = model->forward(in);
  if (terms && out.loss.defined()) {
    const std::function<ModelOutput()> again = [&] {
      ModelInput second = in;
      KVCache fresh = prefilled;
      if (in.cache == &storage) second.cache = &fresh;
      return model->forward(second);
    };
    for (auto& a : active_) {
      auto& e = adapter(a);
      auto term = e.tuner->loss_term(e.config, LossTermInput{in, out, model->task(), again});
      if (term.defined()) out.loss = out.loss + term;
    }
  }
  auto reg = extra_loss();
  if (out.loss.defined() && reg.defined() && is_training()) out.loss = out.loss + reg;
  return out;
}

/// Sets the row groups on every tuner layer for one forward; clears them however it ends.
struct PeftModel::RowGroupsScope {
  std::vector<std::pair<std::string, TunerLayer*>> layers;
  RowGroupsScope(std::vector<std::pair<std::string, TunerLayer*>> l, std::shared_ptr<const RowGroups> g)
      : layers(std::move(l)) {
    for (auto& kv : layers) kv.second->row_groups = g;
  }
  ~RowGroupsScope() {
    for (auto& kv : layers) kv.second->row_groups = nullptr;
  }
};

ModelOutput PeftModel::forward(const ModelInput& in, const std::vector<std::string>& row_adapters) {
  if (row_adapters.empty()) return forward(in);
  torch::Tensor ref;
  for (auto* t : {&in.input_ids, &in.inputs_embeds, &in.decoder_input_ids, &in.labels})
    if (!ref.defined() && t->defined()) ref = *t;
  PEFT_CHECK(ref.defined() && ref.dim() >= 1, "mixed-adapter batch: the input has no batch (input_ids or inputs_embeds)");
  const int64_t B = ref.size(0);
  PEFT_CHECK(static_cast<int64_t>(row_adapters.size()) == B, "mixed-adapter batch: row_adapters names ",
             row_adapters.size(), " adapters for a batch of ", B, " rows");
  PEFT_CHECK(!disabled_, "mixed-adapter batch: the adapters are disabled (disable_adapters)");
  auto layers = tuner_layers();
  // Everything is checked before any layer is touched.
  std::map<std::string, std::vector<int64_t>> rows;
  for (int64_t i = 0; i < B; ++i) {
    const std::string& a = row_adapters[i];
    if (a == kBaseRow) continue;
    if (!adapters_.count(a)) {
      std::string known;
      for (auto& n : order_) known += (known.empty() ? "" : ", ") + n;
      fail("mixed-adapter batch: row ", i, " names adapter '", a, "', which is not loaded (loaded: ",
                known.empty() ? "none" : known, "; \"", kBaseRow, "\" = no adapter)");
    }
    rows[a].push_back(i);
  }
  for (auto& [a, idx] : rows) {
    const auto& e = adapters_.at(a);
    PEFT_CHECK(!e.input || e.input->supports_row_adapters(), "mixed-adapter batch: adapter '", a, "' (",
               e.input ? e.input->method() : "", ") changes the whole model input or shared base tensors and "
               "cannot act on some rows only; mixed batches support the LoRA family, VeRA, LoHa/LoKr, AdaLoRA, IA3, "
               "bottleneck adapters, modules_to_save and ungated soft prompts (prompt tuning, P-tuning, prefix tuning)");
    for (auto& [path, t] : layers) {
      if (!t->has_adapter(a)) continue;
      PEFT_CHECK(!t->merged.count(a), "mixed-adapter batch: adapter '", a, "' is merged into ", path, "; unmerge first");
      PEFT_CHECK(t->supports_row_adapters(a), "mixed-adapter batch: adapter '", a, "' (", t->method(), " at ", path,
                 ") cannot act on some rows only (methods that change the base weights or every row: use it alone)");
    }
  }
  // Soft prompts: each row's in front of its tokens (tuners/row_prompts.h), checked before use.
  std::map<std::string, InputAdapter::RowPrompt> prompts;
  for (auto& [a, idx] : rows) {
    const auto& e = adapters_.at(a);
    if (!e.input || !e.input->changes_input()) continue;
    auto p = e.input->row_prompt();
    PEFT_CHECK(p.has_value(), "mixed-adapter batch: adapter '", a, "' (", e.input->method(), ") cannot act on some rows "
               "only on this model (an encoder-decoder's prefix, a gated prefix): run it alone");
    prompts.emplace(a, std::move(*p));
  }
  ModelInput shaped = in;
  KVCache storage;
  if (!prompts.empty()) {
    std::vector<const InputAdapter::RowPrompt*> per_row(B, nullptr);
    for (int64_t i = 0; i < B; ++i)
      if (auto it = prompts.find(row_adapters[i]); it != prompts.end()) per_row[i] = &it->second;
    apply_row_prompts(*model, shaped, storage, per_row);
  }
  auto groups = std::make_shared<RowGroups>();
  groups->batch = B;
  for (auto& [a, idx] : rows) groups->rows.emplace_back(a, torch::tensor(idx, torch::kLong));
  std::vector<std::string> named;
  for (auto& [a, idx] : rows) named.push_back(a);
  const HalfActivations half(prompts.empty() && half_activations_for(named));
  RowGroupsScope scope(std::move(layers), groups);
  return model->forward(shaped);
}

void PeftModel::delete_adapter(const std::string& name) {
  adapter(name);
  auto layers = tuner_layers();
  for (auto& [path, t] : layers)
    PEFT_CHECK(!t->merged.count(name), "delete_adapter: adapter '", name, "' is merged into ", path, "; unmerge first");
  for (auto& [path, t] : layers)
    if (t->has_adapter(name)) t->remove_adapter(name);
  // Unwrap the wrappers left without adapters (innermost first: the list is in pre-order).
  auto slots = find_slots(*model);
  for (auto it = slots.rbegin(); it != slots.rend(); ++it) {
    auto* t = dynamic_cast<TunerLayer*>(it->get().get());
    if (t && t->adapter_names().empty()) it->parent->replace_slot(it->name, t->base_layer);
  }
  if (adapters_.at(name).input) unregister_module("input_" + name);
  adapters_.erase(name);
  frozen_.erase(name);
  order_.erase(std::remove(order_.begin(), order_.end(), name), order_.end());
  std::vector<std::string> still;
  for (auto& a : active_)
    if (a != name) still.push_back(a);
  set_adapter(still);
}

torch::Tensor PeftModel::extra_loss() {
  torch::Tensor total;
  if (disabled_) return total;
  int64_t count = 0;
  for (auto& kv : tuner_layers())
    for (auto& a : active_) {
      auto r = kv.second->extra_loss(a, &count);
      if (r.defined()) total = total.defined() ? total + r : r;
    }
  return total.defined() && count > 0 ? total / static_cast<double>(count) : total;
}

void PeftModel::before_step(int64_t step) {
  for (auto& kv : tuner_layers())
    for (auto& a : active_) kv.second->before_step(a, step);
  for (auto& a : active_) adapter(a).tuner->on_step(*this, a, step, true);
}
void PeftModel::after_step(int64_t step) {
  for (auto& kv : tuner_layers())
    for (auto& a : active_) kv.second->after_step(a, step);
  for (auto& a : active_) adapter(a).tuner->on_step(*this, a, step, false);
}

int64_t PeftModel::second_run_start() const {
  int64_t start = -1;
  for (auto& a : active_) start = std::max(start, adapter(a).tuner->second_run_start(adapter(a).config));
  return start;
}

bool PeftModel::needs_calibration() const {
  for (auto& a : active_)
    if (adapter(a).tuner->needs_calibration(adapter(a).config)) return true;
  return false;
}

void PeftModel::calibrate(const std::function<torch::Tensor()>& next_loss) {
  bool was_training = is_training();
  eval();
  for (auto& a : active_)
    if (adapter(a).tuner->needs_calibration(adapter(a).config)) adapter(a).tuner->calibrate(*this, a, next_loss);
  train(was_training);
  for (auto& p : parameters())
    if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
}

namespace {
/// " (components.1)" for a tensor holder inside a composite, "" otherwise.
std::string ns_note(const std::string& ns) { return ns.empty() ? "" : " (" + ns + ")"; }
std::string layer_ns(const TunerLayer& t, const std::string& a) {
  for (auto& kv : t.adapter_tensors(a)) {
    auto ns = t.key_namespace(a, kv.first);
    if (!ns.empty()) return ns;
  }
  return "";
}

/// Merging into a quantized base (QLoRA), as peft's Linear4bit / Linear8bitLt.merge: the frozen
/// weight under each given wrapper is dequantized to float32 into the layer's `weight` member (where
/// TunerLayer::merge adds its delta), then quantized back in the layer's own format. The merged
/// weight is rounded to 4 / 8 bits again, so the merged model differs from the unmerged forward by
/// that rounding (warned once); unmerging rounds again. Exact alternative: dequantize_model (the
/// `peft merge --dequantize DTYPE` route) before loading the adapters.
class DequantizedBases {
 public:
  DequantizedBases(const std::vector<std::pair<std::string, TunerLayer*>>& layers, const char* what) {
    torch::NoGradGuard ng;
    for (auto& kv : layers) {
      auto* q = dynamic_cast<QuantLinear*>(innermost(kv.second->base_layer.get()));
      if (!q || placeholders_.count(q)) continue;
      placeholders_[q] = q->weight;
      q->weight = q->dequantized_weight(torch::kFloat32);
      if (type_.empty()) type_ = quant::quant_type_name(q->type);
    }
    if (!placeholders_.empty())
      log_warning(what, " adapters into a quantized base (", type_, ", ", placeholders_.size(),
                  " layers): the weights are dequantized, changed and quantized again, so the result differs from "
                  "the adapter's forward by the quantization rounding (merge into a float model for an exact merge: "
                  "peft merge --dequantize float32)");
  }
  /// Stores the changed weights quantized again and restores each layer's empty placeholder.
  void requantize() {
    torch::NoGradGuard ng;
    for (auto& [q, ph] : placeholders_) {
      q->requantize(q->weight);
      q->weight = ph;
    }
    placeholders_.clear();
  }
  ~DequantizedBases() {  // a failed merge: drop the float copies, the quantized data is unchanged
    for (auto& [q, ph] : placeholders_) q->weight = ph;
  }

 private:
  std::map<QuantLinear*, torch::Tensor> placeholders_;
  std::string type_;
};
}  // namespace

void PeftModel::merge(bool safe_merge) {
  for (auto& a : active_) {
    auto& e = adapter(a);
    PEFT_CHECK(!e.input || !e.input->changes_input(), e.tuner->peft_type(), " adapter '", a, "'",
               ns_note(e.input ? e.input->key_namespace : ""), " changes the model input and cannot be merged");
  }
  // Checked for every layer first, so a refusal leaves nothing half merged.
  for (auto& kv : tuner_layers())
    for (auto& a : active_)
      PEFT_CHECK(!kv.second->has_adapter(a) || kv.second->can_merge(), kv.second->method(), " adapter '", a, "'",
                 ns_note(layer_ns(*kv.second, a)), " at ", kv.first,
                 " cannot be merged (its effect is no change of the module's weights: e.g. an adapter MLP, a "
                 "gate, or DoRA stacked on another adapter's module)");
  // Innermost wrappers first (tuner_layers() lists a wrapper before the ones it wraps): where two
  // adapters stack on one module, y = outer(inner(x)), the inner one folds into the base weight
  // first and the outer one then acts on that weight, so merged == forward; unmerge() undoes
  // them outermost first.
  auto layers = tuner_layers();
  std::vector<std::pair<std::string, TunerLayer*>> todo;
  for (auto& kv : layers)
    for (auto& a : active_)
      if (kv.second->has_adapter(a) && !kv.second->merged.count(a)) {
        todo.push_back(kv);
        break;
      }
  DequantizedBases deq(todo, "merging");
  // safe_merge: the weights of each Linear as they were before this merge touched it.
  struct Saved {
    Linear* lin;
    torch::Tensor weight, bias;
  };
  std::vector<Saved> saved;
  std::vector<std::pair<TunerLayer*, std::string>> done;
  auto finite = [](const torch::Tensor& t) { return !t.defined() || torch::isfinite(t).all().item<bool>(); };
  for (auto it = layers.rbegin(); it != layers.rend(); ++it)
    for (auto& a : active_) {
      auto* t = it->second;
      if (!t->has_adapter(a) || t->merged.count(a)) continue;
      Linear* lin = safe_merge ? innermost_linear(t) : nullptr;
      if (lin && std::none_of(saved.begin(), saved.end(), [&](const Saved& s) { return s.lin == lin; }))
        saved.push_back({lin, lin->weight.clone(), lin->bias.defined() ? lin->bias.clone() : torch::Tensor()});
      t->merge(a);
      t->merged.insert(a);
      done.emplace_back(t, a);
      if (lin && !(finite(lin->weight) && finite(lin->bias))) {
        torch::NoGradGuard ng;
        for (auto& s : saved) {
          s.lin->weight.copy_(s.weight);
          if (s.bias.defined()) s.lin->bias.copy_(s.bias);
        }
        for (auto& [layer, name] : done) layer->merged.erase(name);
        deq.requantize();
        fail("safe_merge: merging adapter '", a, "' into ", it->first, " gives NaN/Inf weights (the adapter seems ",
             "broken); nothing was merged");
      }
    }
  deq.requantize();
}

void PeftModel::unmerge() {
  std::vector<std::pair<std::string, TunerLayer*>> todo;
  for (auto& kv : tuner_layers())
    if (!kv.second->merged.empty()) todo.push_back(kv);
  DequantizedBases deq(todo, "unmerging");
  for (auto& kv : todo) {
    auto* t = kv.second;
    std::vector<std::string> m(t->merged.begin(), t->merged.end());
    for (auto it = m.rbegin(); it != m.rend(); ++it) {
      t->unmerge(*it);
      t->merged.erase(*it);
    }
  }
  deq.requantize();
}

ModelPtr PeftModel::merge_and_unload(bool safe_merge) {
  merge(safe_merge);
  for (auto& ref : find_slots(*model)) {
    if (internal_path(ref.path)) continue;
    LayerPtr l = ref.get();
    if (!dynamic_cast<TunerLayer*>(l.get())) continue;
    while (auto* t = dynamic_cast<TunerLayer*>(l.get())) {
      auto* mts = dynamic_cast<ModulesToSave*>(t);
      LayerPtr next = t->base_layer;
      if (mts)
        for (auto& a : active_)
          if (mts->copies.count(a)) next = mts->copies[a];
      l = next;
    }
    ref.parent->replace_slot(ref.name, l);
  }
  adapters_.clear();
  active_.clear();
  order_.clear();
  return model;
}

// ---- peft's file format -----------------------------------------------------------------------

namespace {
/// Saved key of a layer tensor: peft's `base_model.model.<path>.<key>` (prompt-learning models
/// wrap the base directly: no ".model"), behind the composite component's namespace if any.
std::string layer_key(const AdapterEntry& e, const TunerLayer& t, const std::string& path, const std::string& key) {
  auto ns = t.key_namespace(e.name, key);
  if (!ns.empty()) return ns + ".base_model.model." + path + "." + key;
  return (e.tuner->targets_modules() ? "base_model.model." : "base_model.") + path + "." + key;
}
std::string input_ns(const AdapterEntry& e) {
  return e.input && !e.input->key_namespace.empty() ? e.input->key_namespace + "." : "";
}
}  // namespace

TensorMap PeftModel::adapter_state_dict(const std::string& name) const {
  auto& e = adapter(name);
  TensorMap out;
  for (auto& kv : tuner_layers()) {
    if (!kv.second->has_adapter(name)) continue;
    for (auto& t : kv.second->adapter_tensors(name)) out[layer_key(e, *kv.second, kv.first, t.first)] = t.second.detach();
  }
  if (e.input)
    for (auto& kv : e.input->saved_tensors()) out[input_ns(e) + kv.first] = kv.second.detach();
  return out;
}

void PeftModel::load_adapter_state_dict(const std::string& name, const TensorMap& tensors, const std::string& source) {
  auto& e = adapter(name);
  TensorMap expected, input;
  std::set<std::string> taken;  // keys a layer loaded itself (TunerLayer::load_saved: sparse files)
  torch::NoGradGuard ng;
  for (auto& kv : tuner_layers()) {
    if (!kv.second->has_adapter(name)) continue;
    const std::string ns = layer_ns(*kv.second, name);
    const std::string p = (ns.empty() ? (e.tuner->targets_modules() ? "base_model.model." : "base_model.")
                                      : ns + ".base_model.model.") + kv.first + ".";
    TensorMap own;
    for (auto& t : tensors)
      if (t.first.compare(0, p.size(), p) == 0 && t.first.find('.', p.size()) == std::string::npos)
        own[t.first.substr(p.size())] = t.second;
    if (kv.second->load_saved(name, own, source)) {
      for (auto& t : own) taken.insert(p + t.first);
      continue;
    }
    for (auto& t : kv.second->adapter_tensors(name)) expected[layer_key(e, *kv.second, kv.first, t.first)] = t.second;
  }
  const std::string ins = input_ns(e);
  const TensorMap input_keys = e.input ? e.input->saved_tensors() : TensorMap();
  for (auto& kv : tensors) {
    if (taken.count(kv.first)) continue;
    if (kv.first.compare(0, ins.size(), ins) == 0 && input_keys.count(kv.first.substr(ins.size()))) {
      input[kv.first.substr(ins.size())] = kv.second;
      continue;
    }
    auto it = expected.find(kv.first);
    PEFT_CHECK(it != expected.end(), source, ": tensor '", kv.first,
               "' has no counterpart in the model with this adapter config (wrong base model or config?)");
    PEFT_CHECK(it->second.sizes() == kv.second.sizes(), source, ": tensor '", kv.first, "' has shape ",
               kv.second.sizes(), " but the model expects ", it->second.sizes());
    it->second.copy_(kv.second);
  }
  for (auto& kv : expected)
    PEFT_CHECK(tensors.count(kv.first), source, ": tensor '", kv.first, "' is missing");
  if (e.input) e.input->load_saved(input, source);
  for (auto& kv : tuner_layers())
    if (kv.second->has_adapter(name)) kv.second->after_load(name, source);
}

nlohmann::json read_adapter_config(const std::string& dir) {
  std::string path = join_path(dir, "adapter_config.json");
  auto j = read_adapter_config_file(path);  // types of every field checked, errors name file + field
  return with_context(path, [&] {
    PEFT_CHECK(j.contains("peft_type") && j["peft_type"].is_string(), "field 'peft_type' is missing");
    auto tuner = find_tuner(j["peft_type"].get<std::string>());
    std::string ext_path = join_path(dir, "peft_cpp_config.json");
    if (file_exists(ext_path)) {
      auto ext = read_json(ext_path);
      PEFT_CHECK(ext.is_object(), ext_path, ": must be a JSON object");
      for (auto& k : tuner->extension_keys())
        if (ext.contains(k)) j[k] = ext[k];
    }
    return j;
  });
}

void PeftModel::load_adapter(const std::string& dir, const std::string& name, bool trainable) {
  auto cfg = read_adapter_config(dir);
  std::string weights = join_path(dir, "adapter_model.safetensors");
  PEFT_CHECK(file_exists(weights), weights, ": file not found (adapter_model.bin is not supported; "
             "save with safe_serialization=True)");
  auto tensors = load_safetensors(weights);
  loading_ = true;
  try {
    // What the config asks to allocate is bounded by what is on disk (io/memory_budget.h).
    uint64_t base_bytes = 0, file_bytes = std::filesystem::file_size(weights);
    for (auto& p : model->parameters()) base_bytes += p.numel() * p.element_size();
    const std::string cfg_path = join_path(dir, "adapter_config.json");
    MemoryBudget budget(MemoryBudget::cap(2 * base_bytes + 8 * file_bytes + (256ull << 20)), cfg_path,
                        "the adapter this config describes (cap: 2 x the base model + 8 x " + weights + " + 256 MiB)");
    with_context(cfg_path, [&] { add_adapter(name, cfg); });
  } catch (...) {
    loading_ = false;
    throw;
  }
  loading_ = false;
  load_adapter_state_dict(name, tensors, weights);
  if (!trainable)
    for (auto& kv : tuner_layers())
      for (auto& t : kv.second->trainable_tensors(name)) t.set_requires_grad(false);
}

void PeftModel::save_adapter(const std::string& dir, const std::string& name_) const {
  std::string name = name_.empty() ? first_adapter() : name_;
  auto& e = adapter(name);
  std::filesystem::create_directories(dir);
  nlohmann::json cfg = e.tuner->saved_config(e.config), ext = nlohmann::json::object();
  for (auto& k : e.tuner->extension_keys())
    if (cfg.contains(k)) {
      ext[k] = cfg[k];
      cfg.erase(k);
    }
  if (cfg.contains("base_model_name_or_path")) cfg["base_model_name_or_path"] = model->name_or_path;
  if (cfg.contains("inference_mode")) cfg["inference_mode"] = true;
  save_safetensors(join_path(dir, "adapter_model.safetensors"), adapter_state_dict(name), {{"format", "pt"}});
  write_json(join_path(dir, "adapter_config.json"), cfg);
  if (!ext.empty()) write_json(join_path(dir, "peft_cpp_config.json"), ext);
}

}  // namespace peft
