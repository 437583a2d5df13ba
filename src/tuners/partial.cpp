// Partial (selective) fine-tuning: train a chosen subset of the base model's own parameters.
// Each trainable part is held per adapter next to the frozen original, so disabling, merging
// and unmerging behave as for the other methods.
//
// - BitFit (Ben Zaken et al. 2022, "BitFit", sec. 2): only the bias terms train. Stored as
//   zero-initialised bias deltas `bitfit_bias` [out] on every Linear / LayerNorm that has a
//   bias (b' = b + delta; identity at init; merge: b += delta). Models without biases (Llama)
//   are refused with a clear error unless add_missing_biases is true, which adds zero-
//   initialised biases to bias-less Linear layers (those cannot be merged: the checkpoint has no
//   bias tensor to fold them into). peft_type "BITFIT" (ours). The SEQ_CLS head trains through
//   modules_to_save (set to the head when null).
// - LN tuning (Qi et al. 2024, "Parameter-Efficient Tuning on Layer Normalization", sec. 3):
//   a trainable copy of each norm layer per adapter, peft's LN_TUNING format
//   (`<norm>.ln_tuning_layers.weight` / `.bias`); merge swaps the copy's values in.
// - Layer freezing (Lee et al. 2019, "What Would Elsa Do? Freezing Layers During Transformer
//   Fine-Tuning"): the last num_trainable_layers blocks train fully (a trainable copy of every
//   Linear / norm in them, `<m>.trainable_copy.weight`), the rest stays frozen. peft_type
//   "LAYER_FREEZE" (ours); mergeable.
// - Sparse fine-tuning with a fixed mask (the sparse phase of LT-SFT, Ansell et al. 2022,
//   "Composable Sparse Fine-Tuning", sec. 3: W' = W + Δ with Δ nonzero on k entries):
//   k = density * numel entries per targeted Linear are chosen once, by magnitude of W
//   ("magnitude") or uniformly at random from a seed ("random"), and only their deltas train.
//   Stored sparsely: `sparse_indices` [k] int64 (flat indices into W as [out, in]) and
//   `sparse_values` [k]; merge: W.flat[idx] += values. peft_type "SPARSE_DELTA" (ours).
// Our types write adapter_config.json with "peft_cpp_format_version": 1. FISH, Child-Tuning,
// diff pruning and LT-SFT (sparse deltas chosen by data or training) are in sparse.cpp.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"
#include "tuners/partial_common.h"

namespace peft {
namespace {

using namespace partial;

bool is_norm(Layer* l) { return dynamic_cast<RMSNorm*>(l) || dynamic_cast<LayerNorm*>(l); }
bool is_leaf(Layer* l) { return dynamic_cast<Linear*>(l) || is_norm(l); }
std::string last_name(const std::string& path) {
  auto p = path.rfind('.');
  return p == std::string::npos ? path : path.substr(p + 1);
}
bool internal_path(const std::string& p) {
  return p.find("base_layer") != std::string::npos || p.find("modules_to_save") != std::string::npos;
}
/// The task head (role "head") or a module inside it (RoBERTa's classifier.dense / out_proj):
/// the head trains whole through modules_to_save, which copies it unwrapped.
bool is_head(const PretrainedModel& m, const std::string& path) {
  auto roles = m.roles();
  auto it = roles.find(role::kHead);
  if (it == roles.end()) return false;
  const std::string& h = it->second;
  const std::string dotted = "." + path + ".";
  return dotted.find("." + h + ".") != std::string::npos;
}

// ---- BitFit ---------------------------------------------------------------------------------

class BitFitLayer : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::string method() const override { return "bitfit"; }
  torch::Tensor* base_bias() const {
    Layer* l = innermost(base_layer.get());
    if (auto* lin = dynamic_cast<Linear*>(l)) return lin->bias.defined() ? &lin->bias : nullptr;
    if (auto* ln = dynamic_cast<LayerNorm*>(l)) return ln->bias.defined() ? &ln->bias : nullptr;
    return nullptr;
  }
  int64_t out_dim() const {
    Layer* l = innermost(base_layer.get());
    if (auto* lin = dynamic_cast<Linear*>(l)) return lin->out_features;
    if (auto* ln = dynamic_cast<LayerNorm*>(l)) return ln->dim;
    fail("BITFIT: module is neither a Linear nor a LayerNorm");
  }
  void add(const std::string& a) { add_param(a, "bitfit_bias", torch::zeros({out_dim()}, dtype_of(*base_layer))); }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto y = base_forward(x);
    for (auto& a : live_adapters()) y = y + param(a, "bitfit_bias") * scale_of(a);
    return y;
  }
  bool can_merge() const override { return base_bias() != nullptr; }
  void merge(const std::string& a) override {
    torch::NoGradGuard ng;
    PEFT_CHECK(base_bias(), "BITFIT: a bias added to a layer without one (add_missing_biases) cannot be merged");
    base_bias()->add_(param(a, "bitfit_bias") * scale_of(a));
  }
  void unmerge(const std::string& a) override {
    torch::NoGradGuard ng;
    base_bias()->sub_(param(a, "bitfit_bias") * scale_of(a));
  }
};

class BitFitTuner : public Tuner {
 public:
  std::string peft_type() const override { return "BITFIT"; }
  std::vector<ConfigField> fields() const override {
    return partial_fields({ConfigField{"add_missing_biases", FieldType::Bool, false,
                                       "give bias-free Linears a zero bias that trains (not mergeable)"}});
  }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    auto& c = pm.mutable_config(name);
    head_to_save(pm, c);
    if (!c["target_modules"].is_null()) return;
    bool add_missing = c["add_missing_biases"].get<bool>();
    nlohmann::json t = nlohmann::json::array();
    for (auto& ref : find_slots(*pm.model)) {
      if (internal_path(ref.path) || is_head(*pm.model, ref.path)) continue;
      Layer* l = innermost(ref.get().get());
      auto* lin = dynamic_cast<Linear*>(l);
      auto* ln = dynamic_cast<LayerNorm*>(l);
      if ((lin && (lin->bias.defined() || add_missing)) || (ln && ln->bias.defined())) t.push_back(ref.path);
    }
    PEFT_CHECK(!t.empty(), "BITFIT: model type '", pm.model->model_type(),
               "' has no bias terms to train; set add_missing_biases = true to train zero-initialised biases "
               "(not mergeable), or use another method");
    c["target_modules"] = t;
  }
  void inject(PeftModel&, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    auto cur = slot.get();
    wrap<BitFitLayer>(slot, [&](BitFitLayer& layer) {
      Layer* l = innermost(cur.get());
      auto* lin = dynamic_cast<Linear*>(l);
      PEFT_CHECK(lin || dynamic_cast<LayerNorm*>(l), "BITFIT: target ", slot.path, " is neither a Linear nor a LayerNorm");
      PEFT_CHECK(!lin || lin->bias.defined() || c["add_missing_biases"].get<bool>(), "BITFIT: ", slot.path,
                 " has no bias (set add_missing_biases = true to add a zero-initialised one)");
      layer.add(name);
    });
  }
};

// ---- trainable copies (LN tuning, layer freezing) -----------------------------------------

class CopyLayer : public TunerLayer {
 public:
  CopyLayer(LayerPtr base, std::string key, std::string method) : TunerLayer(std::move(base)), key_(std::move(key)), method_(std::move(method)) {}
  std::string method() const override { return method_; }
  void add(const std::string& a) {
    auto c = innermost(base_layer.get())->clone_layer();
    c->to(dtype_of(*base_layer));
    copies_[a] = c;
    // The copy's own tensors, registered under peft's names (`<key>.<a>.weight`).
    for (auto& p : c->named_parameters()) add_param(a, key_ + "." + p.key(), p.value());
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto live = live_adapters();
    if (live.empty()) return base_forward(x);
    return copies_.at(live.back())->forward(x);
  }
  bool can_merge() const override { return true; }
  void merge(const std::string& a) override {
    torch::NoGradGuard ng;
    auto base = innermost(base_layer.get())->named_parameters();
    auto& saved = backup_[a];
    saved.clear();
    for (auto& p : copies_.at(a)->named_parameters()) {
      auto& b = base[p.key()];
      saved.push_back(b.clone());
      b.copy_(p.value());
    }
  }
  void unmerge(const std::string& a) override {
    torch::NoGradGuard ng;
    auto base = innermost(base_layer.get())->named_parameters();
    size_t i = 0;
    for (auto& p : copies_.at(a)->named_parameters()) base[p.key()].copy_(backup_.at(a).at(i++));
    backup_.erase(a);
  }

 private:
  std::string key_, method_;
  std::map<std::string, LayerPtr> copies_;
  std::map<std::string, std::vector<torch::Tensor>> backup_;
};

class LnTuningTuner : public Tuner {
 public:
  std::string peft_type() const override { return "LN_TUNING"; }
  // peft 0.13's LNTuningConfig, then our extension fields.
  std::vector<ConfigField> fields() const override {
    return with_common({common_field("exclude_modules").extension(), common_field("layers_to_transform").extension(),
                        common_field("layers_pattern").extension()},
                       {"target_modules", "modules_to_save", "base_model_name_or_path", "revision", "task_type",
                        "inference_mode", "auto_mapping"});
  }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    auto& c = pm.mutable_config(name);
    head_to_save(pm, c);
    if (!c["target_modules"].is_null()) return;
    // Every norm of the model, by module name (Llama: input_layernorm, post_attention_layernorm, norm).
    std::vector<std::string> names;
    for (auto& ref : find_slots(*pm.model))
      if (!internal_path(ref.path) && is_norm(innermost(ref.get().get())) &&
          std::find(names.begin(), names.end(), last_name(ref.path)) == names.end())
        names.push_back(last_name(ref.path));
    PEFT_CHECK(!names.empty(), "LN_TUNING: model type '", pm.model->model_type(), "' has no norm layer");
    c["target_modules"] = names;
  }
  void inject(PeftModel&, const SlotRef& slot, const std::string& name, const nlohmann::json&) const override {
    auto cur = slot.get();
    PEFT_CHECK(is_norm(innermost(cur.get())), "LN_TUNING: target ", slot.path, " is not a norm layer");
    wrap<CopyLayer>(slot, [&](CopyLayer& layer) {
      layer.add(name);
    }, "ln_tuning_layers", "ln_tuning");
  }
};

class LayerFreezeTuner : public Tuner {
 public:
  std::string peft_type() const override { return "LAYER_FREEZE"; }
  std::vector<ConfigField> fields() const override {
    return partial_fields({ConfigField{"num_trainable_layers", FieldType::Int, 1, "the last n blocks train in full"}.at_least(1)});
  }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    auto& c = pm.mutable_config(name);
    head_to_save(pm, c);
    const int64_t L = pm.model->dims().num_layers, n = c["num_trainable_layers"].get<int64_t>();
    PEFT_CHECK(n <= L, "adapter config: num_trainable_layers (", n, ") exceeds the model's ", L, " layers");
    if (c["layers_to_transform"].is_null()) {
      c["layers_to_transform"] = nlohmann::json::array();
      for (int64_t i = L - n; i < L; ++i) c["layers_to_transform"].push_back(i);
    }
    if (c["target_modules"].is_null()) {  // every Linear / norm inside the blocks
      std::vector<std::string> names;
      std::string pat = "." + pm.model->layers_pattern() + ".";
      for (auto& ref : find_slots(*pm.model))
        if (!internal_path(ref.path) && ("." + ref.path).find(pat) != std::string::npos && is_leaf(ref.get().get()) &&
            std::find(names.begin(), names.end(), last_name(ref.path)) == names.end())
          names.push_back(last_name(ref.path));
      c["target_modules"] = names;
    }
  }
  void inject(PeftModel&, const SlotRef& slot, const std::string& name, const nlohmann::json&) const override {
    auto cur = slot.get();
    if (!is_leaf(innermost(cur.get()))) return;  // containers (an MLP) are covered by their leaves
    wrap<CopyLayer>(slot, [&](CopyLayer& layer) {
      layer.add(name);
    }, "trainable_copy", "layer_freeze");
  }
};

// ---- sparse deltas --------------------------------------------------------------------------

class SparseDeltaLayer : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::string method() const override { return "sparse_delta"; }
  void add(const std::string& a, double density, const std::string& selection, uint64_t seed) {
    auto& l = base_linear();
    auto W = l.weight_out_in();
    const int64_t n = W.numel();
    const int64_t k = std::max<int64_t>(1, std::min<int64_t>(n, std::llround(density * n)));
    torch::Tensor idx;
    if (selection == "magnitude") {
      idx = std::get<1>(W.detach().abs().reshape({-1}).topk(k));
    } else {
      auto gen = at::detail::createCPUGenerator(seed);
      idx = torch::randperm(n, gen, torch::kLong).slice(0, 0, k);
    }
    indices_[a] = std::get<0>(idx.sort());
    add_param(a, "sparse_values", torch::zeros({k}, trainable_dtype(W.scalar_type())));
  }
  torch::Tensor delta(const std::string& a) {
    auto& l = base_linear();
    auto vals = param(a, "sparse_values");
    auto flat = torch::zeros({l.out_features * l.in_features}, vals.options()).index_add(0, indices_.at(a).to(vals.device()), vals);
    return flat.view({l.out_features, l.in_features}) * scale_of(a);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto y = base_forward(x);
    for (auto& a : live_adapters()) y = y + torch::nn::functional::linear(x, delta(a).to(x.scalar_type()));
    return y;
  }
  std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors(const std::string& a) const override {
    auto out = TunerLayer::adapter_tensors(a);
    auto it = indices_.find(a);
    if (it != indices_.end()) out.emplace_back("sparse_indices", it->second);
    return out;
  }
  bool can_merge() const override { return true; }
  void merge(const std::string& a) override {
    torch::NoGradGuard ng;
    auto W = base_linear().weight_out_in();
    W.add_(delta(a).to(W.scalar_type()));
  }
  void unmerge(const std::string& a) override {
    torch::NoGradGuard ng;
    auto W = base_linear().weight_out_in();
    W.sub_(delta(a).to(W.scalar_type()));
  }

 private:
  std::map<std::string, torch::Tensor> indices_;  // int64, not a parameter (dtype casts leave it alone)
};

class SparseDeltaTuner : public Tuner {
 public:
  std::string peft_type() const override { return "SPARSE_DELTA"; }
  std::vector<ConfigField> fields() const override {
    return partial_fields({
        density_field(0.01, "the fraction of each projection's entries that train"),
        ConfigField{"selection", FieldType::String, "magnitude", "which entries: the largest |W| or random"}.one_of(
            {"magnitude", "random"}),
        ConfigField{"seed", FieldType::Int, 0, "the random selection's seed"}.at_least(0),
    });
  }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    target_projections(pm, pm.mutable_config(name));
  }
  void inject(PeftModel&, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    auto cur = slot.get();
    if (!dynamic_cast<Linear*>(innermost(cur.get()))) return;
    wrap<SparseDeltaLayer>(slot, [&](SparseDeltaLayer& layer) {
      layer.add(name, c["density"].get<double>(), c["selection"].get<std::string>(), c["seed"].get<uint64_t>());
    });
  }
};

PEFT_REGISTER_TUNER(BitFitTuner);
PEFT_REGISTER_TUNER(LnTuningTuner);
PEFT_REGISTER_TUNER(LayerFreezeTuner);
PEFT_REGISTER_TUNER(SparseDeltaTuner);
PEFT_REGISTER_METHOD("bitfit", {{"peft_type", "BITFIT"}});
PEFT_REGISTER_METHOD("ln-tuning", {{"peft_type", "LN_TUNING"}});
PEFT_REGISTER_METHOD("layer-freeze", {{"peft_type", "LAYER_FREEZE"}});
PEFT_REGISTER_METHOD("sparse-delta", {{"peft_type", "SPARSE_DELTA"}});

}  // namespace
}  // namespace peft
