// Sparse fine-tuning of the targeted Linear weights: W' = W + ΔW, with only some entries of ΔW
// allowed to change. All four methods keep a dense, zero-initialised delta D [out, in] per
// targeted Linear while training (so optimizer memory is that of full fine-tuning of those
// weights) and differ in which entries train and how that choice is made:
//
// - FISH mask (Sung et al. 2021, "Training Neural Networks with Fixed Sparse Masks", eq. 2-3):
//   the empirical Fisher F = 1/N sum_i (dL_i/dW)^2 over `fisher_batches` calibration batches
//   (each term the squared gradient of one batch's mean loss; batch size 1 gives the paper's
//   per-example estimator), then the top k = density * (numel of all targeted weights) entries,
//   chosen globally across the targeted weights, train: ΔW = M ⊙ D. peft_type "FISH_MASK".
// - Child-Tuning (Xu et al. 2021, "Raise a Child in Large Language Model", sec. 3): the update
//   is masked, w <- w - lr * dL/dw ⊙ M (eq. 4).
//   mode "D" (task-driven, eq. 5-6): M keeps the top reserve_p of all targeted entries by the
//   same Fisher information as FISH, chosen once, globally (as the authors' code does);
//   mode "F" (task-free, eq. 7): every step a fresh M ~ Bernoulli(reserve_p), and the kept
//   gradients are scaled by 1/reserve_p. peft_type "CHILD_TUNING". Mode F trains every entry
//   over time, so its delta is saved dense (`delta_weight` [out, in]).
// - Diff pruning (Guo et al. 2021, "Parameter-Efficient Transfer Learning with Diff Pruning",
//   sec. 3): ΔW = z ⊙ w with a hard-concrete gate per entry (Louizos et al. 2018, eq. 9-10):
//   u ~ U(0, 1), s = sigmoid((log u - log(1 - u) + alpha) / temperature), z = clamp(s (r - l) + l,
//   0, 1). Defaults are Guo et al.'s (sec. 3.2, s = sigmoid(log u - log(1 - u) + alpha), i.e.
//   temperature 1; and their released code's concrete_lower / concrete_upper = -1.5 / 1.5,
//   alpha_init 5, sparsity_pen 1.25e-7): stretch (l, r) = (stretch_l, stretch_r) = (-1.5, 1.5).
//   Louizos et al.'s own setting, (gamma, zeta, beta) = (-0.1, 1.1, 2/3), is stretch_l -0.1,
//   stretch_r 1.1, temperature 2/3 (tests/tuners/partial_test.cpp checks both). The expected
//   L0 norm, l0_lambda * sum sigmoid(alpha - temperature * log(-l / r)) (Louizos eq. 12), is added
//   to the training loss. At eval (and for merge / save) the gate is deterministic,
//   z = clamp(sigmoid(alpha) (r - l) + l, 0, 1), and z ⊙ w is magnitude-pruned to the top
//   density * numel entries of each weight (the paper's projection onto the L0 ball, sec. 3.3).
//   peft_type "DIFF_PRUNING". A loaded diff-pruning adapter is that pruned sparse delta; trained
//   further, it fine-tunes with that fixed mask (the paper's second phase).
// - LT-SFT (Ansell et al. 2022, "Composable Sparse Fine-Tuning for Cross-Lingual Transfer",
//   sec. 3.1): phase 1 trains D densely for phase1_steps optimizer steps; then the k = density *
//   numel entries (global across the targeted weights) with the largest |W1 - W0| = |D| are
//   kept, D is reset to 0 (W0) and phase 2 trains only them: ΔW = M ⊙ D, with a fresh optimizer
//   as the paper's second run (the Trainer drops the Adam moments and step counts at the phase
//   boundary, PeftModel::request_optimizer_reset) and gives each phase its own learning-rate schedule
//   (phase 1 over phase1_steps, phase 2 over the remaining max_steps). peft_type "LT_SFT".
//
// Once a mask exists the adapter is saved sparsely, as SPARSE_DELTA is: `sparse_indices` [k]
// int64 (flat indices into W as [out, in], ascending) and `sparse_values` [k]; otherwise (Child-
// Tuning_F, LT-SFT in phase 1) dense as `delta_weight`. The mask is part of the saved adapter, so
// a resumed run restores it. Our types write adapter_config.json with "peft_cpp_format_version": 1.
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"
#include "tuners/partial_common.h"

namespace peft {
namespace {

using namespace partial;

/// How the entries of one adapter's delta train.
struct SparseRule {
  torch::Tensor mask;  // bool [out, in]: the entries that train; undefined: all of them
  double keep = 1;     // Child-Tuning_F: Bernoulli keep probability of each gradient entry
  bool gated = false;  // diff pruning (until a pruned delta is loaded)
  double density = 1, alpha_init = 0, l = -1.5, r = 1.5, temperature = 1, l0_lambda = 0;  // diff pruning
};

/// Flat indices (ascending) of the k = round(density * numel) largest |t|, at least one.
torch::Tensor top_indices(const torch::Tensor& t, double density) {
  const int64_t n = t.numel(), k = std::max<int64_t>(1, std::min<int64_t>(n, std::llround(density * n)));
  if (k == n) return torch::arange(n, t.options().dtype(torch::kLong));
  return std::get<0>(std::get<1>(t.detach().abs().reshape({-1}).topk(k)).sort());
}

class SparseFtLayer : public TunerLayer {
 public:
  SparseFtLayer(LayerPtr base, std::string method) : TunerLayer(std::move(base)), method_(std::move(method)) {}
  std::string method() const override { return method_; }

  void add(const std::string& a, const SparseRule& rule) {
    auto W = base_linear().weight_out_in();
    add_param(a, "delta_weight", torch::zeros(W.sizes(), trainable_dtype(W.scalar_type())));
    if (rule.gated) add_param(a, "diff_alpha", torch::full(W.sizes(), rule.alpha_init, trainable_dtype(W.scalar_type())));
    rules_[a] = rule;
  }
  const SparseRule& rule(const std::string& a) const { return rules_.at(a); }
  /// Fixes the entries that train from now on; `reset`: the delta starts again from 0 (LT-SFT).
  void select(const std::string& a, const torch::Tensor& mask, bool reset) {
    torch::NoGradGuard ng;
    rules_.at(a).mask = mask.to(torch::kBool).clone();
    if (reset) param(a, "delta_weight").zero_();
  }

  torch::Tensor delta_weight(const std::string& a) override { return delta(a, /*sample=*/false) * scale_of(a); }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto y = base_forward(x);
    for (auto& a : live_adapters())
      y = y + torch::nn::functional::linear(x, (delta(a, is_training()) * scale_of(a)).to(x.scalar_type()));
    return y;
  }
  bool can_merge() const override { return true; }

  // Child-Tuning_F (eq. 7): a fresh Bernoulli(keep) mask on the gradient, kept entries / keep.
  void before_step(const std::string& a, int64_t) override {
    auto it = rules_.find(a);
    if (it == rules_.end() || it->second.keep >= 1) return;
    auto& g = param(a, "delta_weight").mutable_grad();
    if (!g.defined()) return;
    torch::NoGradGuard ng;
    g.mul_(torch::empty_like(g).bernoulli_(it->second.keep)).div_(it->second.keep);
  }
  // Diff pruning: expected L0 norm of the gates (Louizos et al. eq. 12), a plain sum as in the
  // paper (so *count is left alone and the model does not average it away).
  torch::Tensor extra_loss(const std::string& a, int64_t*) override {
    auto it = rules_.find(a);
    if (it == rules_.end() || !it->second.gated || !is_training()) return {};
    auto& r = it->second;
    return r.l0_lambda * torch::sigmoid(param(a, "diff_alpha") - r.temperature * std::log(-r.l / r.r)).sum();
  }

  int64_t trainable_numel(const std::string& a) const override {
    auto t = TunerLayer::adapter_tensors(a);
    auto& r = rules_.at(a);
    auto d = tensor_of(t, "delta_weight");
    if (!d.requires_grad()) return 0;
    if (r.gated) return 2 * d.numel();  // w and alpha
    return r.mask.defined() ? r.mask.sum().item<int64_t>() : d.numel();
  }
  std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors(const std::string& a) const override {
    auto t = TunerLayer::adapter_tensors(a);
    auto& r = rules_.at(a);
    auto d = tensor_of(t, "delta_weight");
    if (!r.gated && !r.mask.defined()) return {{"delta_weight", d}};
    torch::NoGradGuard ng;
    torch::Tensor full = d, idx;
    if (r.gated) {
      full = gate(tensor_of(t, "diff_alpha"), r) * d;
      idx = top_indices(full, r.density);
    } else {
      idx = r.mask.reshape({-1}).nonzero().reshape({-1});
    }
    return {{"sparse_indices", idx}, {"sparse_values", full.reshape({-1}).index_select(0, idx)}};
  }
  bool load_saved(const std::string& a, const TensorMap& saved, const std::string& source) override {
    auto& r = rules_.at(a);
    auto& d = param(a, "delta_weight");
    torch::NoGradGuard ng;
    std::string keys;
    for (auto& kv : saved) keys += " " + kv.first;
    if (saved.count("delta_weight")) {
      auto& t = saved.at("delta_weight");
      PEFT_CHECK(t.sizes() == d.sizes(), source, ": ", method_, " tensor 'delta_weight' has shape ", t.sizes(),
                 " but the model expects ", d.sizes());
      d.copy_(t);
      r.mask = torch::Tensor();
    } else {
      PEFT_CHECK(saved.count("sparse_indices") && saved.count("sparse_values"), source, ": a ", method_,
                 " layer needs 'sparse_indices' and 'sparse_values' (or 'delta_weight'); found:", keys.empty() ? " none" : keys);
      auto idx = saved.at("sparse_indices"), vals = saved.at("sparse_values");
      PEFT_CHECK(idx.scalar_type() == torch::kLong && idx.dim() == 1 && vals.dim() == 1 && vals.numel() == idx.numel(),
                 source, ": ", method_, " 'sparse_indices' must be int64 [k] and 'sparse_values' [k]; got ",
                 idx.sizes(), " and ", vals.sizes());
      PEFT_CHECK(idx.numel() == 0 || (idx.min().item<int64_t>() >= 0 && idx.max().item<int64_t>() < d.numel()), source,
                 ": ", method_, " 'sparse_indices' out of range for a weight of ", d.numel(), " entries");
      d.zero_();
      d.view({-1}).index_copy_(0, idx.to(d.device()), vals.to(d.options()));
      r.mask = torch::zeros(d.sizes(), d.options().dtype(torch::kBool));
      r.mask.view({-1}).index_fill_(0, idx.to(d.device()), true);
    }
    r.gated = false;  // a loaded diff-pruning adapter is its pruned delta
    return true;
  }

 private:
  static torch::Tensor tensor_of(const std::vector<std::pair<std::string, torch::Tensor>>& t, const std::string& key) {
    for (auto& kv : t)
      if (kv.first == key) return kv.second;
    TORCH_INTERNAL_ASSERT(false, "no tensor ", key);
    return {};
  }
  // Deterministic hard-concrete gate (Louizos et al. 2018, eq. 13).
  static torch::Tensor gate(const torch::Tensor& alpha, const SparseRule& r) {
    return (torch::sigmoid(alpha) * (r.r - r.l) + r.l).clamp(0, 1);
  }
  // ΔW before the user scale; `sample`: draw the hard-concrete gates (diff pruning, training).
  torch::Tensor delta(const std::string& a, bool sample) {
    auto& r = rules_.at(a);
    auto d = param(a, "delta_weight");
    if (!r.gated) return r.mask.defined() ? d * r.mask.to(d.device()) : d;
    auto alpha = param(a, "diff_alpha");
    if (sample) {
      auto u = torch::rand_like(alpha).clamp(1e-6, 1 - 1e-6);
      auto s = torch::sigmoid((u.log() - (-u).log1p() + alpha) / r.temperature);
      return (s * (r.r - r.l) + r.l).clamp(0, 1) * d;
    }
    auto zw = gate(alpha, r) * d;
    if (r.density >= 1) return zw;
    auto keep = torch::zeros({zw.numel()}, zw.options().dtype(torch::kBool)).index_fill(0, top_indices(zw, r.density), true);
    return zw * keep.view(zw.sizes());
  }

  std::string method_;
  std::map<std::string, SparseRule> rules_;
};

std::vector<SparseFtLayer*> sparse_layers(PeftModel& pm, const std::string& name) {
  std::vector<SparseFtLayer*> out;
  for (auto& kv : pm.tuner_layers())
    if (auto* l = dynamic_cast<SparseFtLayer*>(kv.second); l && l->has_adapter(name)) out.push_back(l);
  return out;
}

/// Keeps the k = round(density * total) entries with the largest `scores` across all `layers`
/// (one global ranking, as FISH, Child-Tuning_D and LT-SFT do).
void select_global(const std::vector<SparseFtLayer*>& layers, const std::string& name, const std::vector<torch::Tensor>& scores,
                   double density, bool reset) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> flat;
  for (auto& s : scores) flat.push_back(s.reshape({-1}).to(torch::kFloat64));
  auto all = torch::cat(flat);
  const int64_t total = all.numel(), k = std::max<int64_t>(1, std::min<int64_t>(total, std::llround(density * total)));
  auto keep = torch::zeros({total}, all.options().dtype(torch::kBool)).index_fill(0, std::get<1>(all.topk(k)), true);
  int64_t off = 0;
  for (size_t i = 0; i < layers.size(); ++i) {
    layers[i]->select(name, keep.slice(0, off, off + scores[i].numel()).view(scores[i].sizes()), reset);
    off += scores[i].numel();
  }
}

/// Common parts: default targets (every attention / MLP projection), one layer type.
class SparseTuner : public Tuner {
 public:
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    target_projections(pm, pm.mutable_config(name));
  }
  void inject(PeftModel&, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    auto cur = slot.get();
    if (!dynamic_cast<Linear*>(innermost(cur.get()))) return;
    wrap<SparseFtLayer>(slot, [&](SparseFtLayer& layer) {
      layer.add(name, rule(c));
    }, layer_method());
  }

 protected:
  virtual std::string layer_method() const = 0;
  virtual SparseRule rule(const nlohmann::json& c) const { return {}; }
  // FISH / Child-Tuning_D: the Fisher information of every targeted entry (see the file comment),
  // then a global top-`density` mask.
  static void fisher_select(PeftModel& pm, const std::string& name, double density,
                            const std::function<torch::Tensor()>& next_loss) {
    auto layers = sparse_layers(pm, name);
    const int64_t n = pm.adapter(name).config["fisher_batches"].get<int64_t>();
    std::vector<torch::Tensor> params, fisher;
    for (auto* l : layers) {
      params.push_back(l->param(name, "delta_weight"));
      PEFT_CHECK(params.back().requires_grad(), "calibration: adapter '", name, "' must be active and trainable");
      fisher.push_back(torch::zeros_like(params.back()));
    }
    for (int64_t b = 0; b < n; ++b) {
      auto loss = next_loss();
      PEFT_CHECK(loss.defined(), "calibration: the model returned no loss (the calibration batches need labels)");
      auto g = torch::autograd::grad({loss}, params, {}, false, false, /*allow_unused=*/true);
      for (size_t i = 0; i < g.size(); ++i)
        if (g[i].defined()) fisher[i] += g[i].detach().square() / double(n);
    }
    select_global(layers, name, fisher, density, /*reset=*/false);
  }
  static void require_mask(PeftModel& pm, const std::string& name, const std::string& what) {
    for (auto* l : sparse_layers(pm, name))
      PEFT_CHECK(l->rule(name).mask.defined(), what, " adapter '", name,
                 "' has no mask yet: call PeftModel::calibrate before training (Trainer::train does)");
  }
};

class FishMaskTuner : public SparseTuner {
 public:
  std::string peft_type() const override { return "FISH_MASK"; }
  std::vector<ConfigField> fields() const override {
    return partial_fields({
        density_field(0.005, "the fraction of all entries that train (the paper keeps 0.5%)"),
        ConfigField{"fisher_batches", FieldType::Int, 16, "batches for the Fisher information estimate"}.at_least(1),
    });
  }
  bool needs_calibration(const nlohmann::json&) const override { return true; }
  void calibrate(PeftModel& pm, const std::string& name, const std::function<torch::Tensor()>& next_loss) const override {
    fisher_select(pm, name, pm.adapter(name).config["density"].get<double>(), next_loss);
  }
  void on_step(PeftModel& pm, const std::string& name, int64_t, bool before) const override {
    if (before) require_mask(pm, name, "FISH_MASK");
  }

 protected:
  std::string layer_method() const override { return "fish_mask"; }
};

class ChildTuningTuner : public SparseTuner {
 public:
  std::string peft_type() const override { return "CHILD_TUNING"; }
  std::vector<ConfigField> fields() const override {
    return partial_fields({
        ConfigField{"mode", FieldType::String, "D", "D: a task-driven mask from Fisher information; F: a random mask per step"}
            .one_of({"D", "F"}),
        ConfigField{"reserve_p", FieldType::Number, 0.3, "the fraction of entries in the child network"}.fraction(),
        ConfigField{"fisher_batches", FieldType::Int, 16, "mode D: batches for the Fisher estimate"}.at_least(1),
    });
  }
  bool needs_calibration(const nlohmann::json& c) const override { return c["mode"] == "D"; }
  void calibrate(PeftModel& pm, const std::string& name, const std::function<torch::Tensor()>& next_loss) const override {
    fisher_select(pm, name, pm.adapter(name).config["reserve_p"].get<double>(), next_loss);
  }
  void on_step(PeftModel& pm, const std::string& name, int64_t, bool before) const override {
    if (before && needs_calibration(pm.adapter(name).config)) require_mask(pm, name, "CHILD_TUNING (mode D)");
  }

 protected:
  std::string layer_method() const override { return "child_tuning"; }
  SparseRule rule(const nlohmann::json& c) const override {
    SparseRule r;
    if (c["mode"] == "F") r.keep = c["reserve_p"].get<double>();
    return r;
  }
};

class DiffPruningTuner : public SparseTuner {
 public:
  std::string peft_type() const override { return "DIFF_PRUNING"; }
  // Guo et al. 2021's values; Louizos et al. 2018 stretch to (-0.1, 1.1) with temperature 2/3.
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    return partial_fields({
        density_field(0.005, "the target fraction of nonzero entries (magnitude pruning at the end)"),
        ConfigField{"l0_lambda", T::Number, 1.25e-7, "weight of the L0 penalty (a sum over entries)"}.at_least(0),
        ConfigField{"alpha_init", T::Number, 5.0, "initial gate log-odds (5: gates start open)"},
        ConfigField{"stretch_l", T::Number, -1.5, "the hard-concrete stretch's left end (< 0)"},
        ConfigField{"stretch_r", T::Number, 1.5, "its right end (> 1)"}.above(1),
        ConfigField{"temperature", T::Number, 1.0, "the hard-concrete temperature"}.above(0),
    });
  }
  void validate(const nlohmann::json& c) const override {
    PEFT_CHECK(c["stretch_l"].get<double>() < 0, "adapter config: field 'stretch_l' must be < 0 (the gate's stretch)");
  }

 protected:
  std::string layer_method() const override { return "diff_pruning"; }
  SparseRule rule(const nlohmann::json& c) const override {
    SparseRule r;
    r.gated = true;
    r.density = c["density"];
    r.alpha_init = c["alpha_init"];
    r.l = c["stretch_l"];
    r.r = c["stretch_r"];
    r.temperature = c["temperature"];
    r.l0_lambda = c["l0_lambda"];
    return r;
  }
};

class LtSftTuner : public SparseTuner {
 public:
  std::string peft_type() const override { return "LT_SFT"; }
  std::vector<ConfigField> fields() const override {
    return partial_fields({
        density_field(0.01, "the fraction of entries kept for phase 2"),
        ConfigField{"phase1_steps", FieldType::Int, 100, "optimizer steps of the dense first run"}.at_least(1),
    });
  }
  // After the phase1_steps-th optimizer step: keep the entries that moved most, back to W0.
  void on_step(PeftModel& pm, const std::string& name, int64_t step, bool before) const override {
    auto& c = pm.adapter(name).config;
    if (before || step + 1 != c["phase1_steps"].get<int64_t>()) return;
    auto layers = sparse_layers(pm, name);
    std::vector<torch::Tensor> moved;
    for (auto* l : layers) {
      if (l->rule(name).mask.defined()) return;  // already sparse (a loaded phase-2 adapter)
      moved.push_back(l->param(name, "delta_weight").detach().abs());
    }
    select_global(layers, name, moved, c["density"].get<double>(), /*reset=*/true);
    pm.request_optimizer_reset();  // phase 2 starts with a fresh optimizer (sec. 3.1)
  }
  int64_t second_run_start(const nlohmann::json& c) const override { return c.value("phase1_steps", int64_t{-1}); }

 protected:
  std::string layer_method() const override { return "lt_sft"; }
};

PEFT_REGISTER_TUNER(FishMaskTuner);
PEFT_REGISTER_TUNER(ChildTuningTuner);
PEFT_REGISTER_TUNER(DiffPruningTuner);
PEFT_REGISTER_TUNER(LtSftTuner);
PEFT_REGISTER_METHOD("fish-mask", {{"peft_type", "FISH_MASK"}});
PEFT_REGISTER_METHOD("child-tuning-d", {{"peft_type", "CHILD_TUNING"}, {"mode", "D"}});
PEFT_REGISTER_METHOD("child-tuning-f", {{"peft_type", "CHILD_TUNING"}, {"mode", "F"}});
PEFT_REGISTER_METHOD("diff-pruning", {{"peft_type", "DIFF_PRUNING"}});
PEFT_REGISTER_METHOD("lt-sft", {{"peft_type", "LT_SFT"}});

}  // namespace
}  // namespace peft
