// AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for PEFT").
// SVD-form update (eq. 3): ΔW = P Λ Q with P = lora_B [out, r], Λ = diag(lora_E) [r, 1],
// Q = lora_A [r, in]; as peft computes it, y = base(x) + x (A ⊙ E)^T B^T · α / (r + 1e-5).
// Init: A, B ~ N(0, 0.02), E = 0 (identity at start).
// Orthogonality regulariser (eq. 4): R = ||P^T P − I||_F + ||Q Q^T − I||_F, averaged over all
// matrices and weighted by orth_reg_weight.
// Budget (eq. 7-12): importance I = |w ⊙ ∇w| smoothed by EMA (β1) times its uncertainty (β2);
// each triplet (E_i, column i of B, row i of A) scores S = s(E_i) + mean s(A_i·) + mean s(B_·i);
// the total rank budget falls cubically from init_r·n to target_r·n between tinit and
// total_step − tfinal, and the lowest-scoring E entries are zeroed every deltaT steps.
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"

namespace peft {
namespace {

class AdaLoraLinear : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::map<std::string, double> alpha, ranknum, dropout, orth_weight;
  std::map<std::string, std::map<std::string, torch::Tensor>> ipt, unc;  // EMA importance/uncertainty
  std::string method() const override { return "adalora"; }

  void add(const std::string& a, int64_t r, double lora_alpha, double drop, double orth, bool init_weights) {
    auto& l = base_linear();
    auto dt = trainable_dtype(l.weight.scalar_type());
    alpha[a] = lora_alpha;
    ranknum[a] = static_cast<double>(r);
    dropout[a] = drop;
    orth_weight[a] = orth;
    // peft: A, E, B ~ N(0, 1), then (init_lora_weights) E = 0 and A, B ~ N(0, 0.02^2).
    const double sd = init_weights ? 0.02 : 1.0;
    add_param(a, "lora_A", (torch::randn({r, l.in_features}) * sd).to(dt));
    add_param(a, "lora_E", init_weights ? torch::zeros({r, 1}, dt) : torch::randn({r, 1}).to(dt));
    add_param(a, "lora_B", (torch::randn({l.out_features, r}) * sd).to(dt));
  }
  double scaling(const std::string& a) const { return alpha.at(a) / (ranknum.at(a) + 1e-5) * scale_of(a); }
  torch::Tensor delta_weight(const std::string& a) override {
    return param(a, "lora_B").matmul(param(a, "lora_A") * param(a, "lora_E")) * scaling(a);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    return additive_forward(x, [this](const std::string& a, const torch::Tensor& x) {
      auto xd = dropout[a] > 0 ? torch::dropout(x, dropout[a], is_training()) : x;
      auto AE = param(a, "lora_A") * param(a, "lora_E");
      return torch::nn::functional::linear(torch::nn::functional::linear(xd, AE), param(a, "lora_B")) * scaling(a);
    });
  }
  bool supports_row_adapters(const std::string&) const override { return true; }
  bool keeps_half_activations() const override { return true; }  // additive_forward casts
  torch::Tensor extra_loss(const std::string& a, int64_t* count) override {
    if (!has_adapter(a) || !is_training()) return {};
    auto A = param(a, "lora_A"), B = param(a, "lora_B");
    auto IA = torch::eye(A.size(0), A.options()), IB = torch::eye(B.size(1), B.options());
    *count += 2;
    return orth_weight[a] * ((A.matmul(A.t()) - IA).norm() + (B.t().matmul(B) - IB).norm());
  }
  bool can_merge() const override { return true; }

  // Updates the EMA importance of A, E, B from their current gradients (eq. 8-10).
  void update_importance(const std::string& a, double b1, double b2) {
    torch::NoGradGuard ng;
    for (const char* k : {"lora_A", "lora_E", "lora_B"}) {
      auto& p = param(a, k);
      if (!p.grad().defined()) continue;
      auto s = (p * p.grad()).abs();
      auto& I = ipt[a][k];
      auto& U = unc[a][k];
      if (!I.defined()) {
        I = torch::zeros_like(s);
        U = torch::zeros_like(s);
      }
      I.mul_(b1).add_((1 - b1) * s);
      U.mul_(b2).add_((1 - b2) * (s - I).abs());
    }
  }
  // Triplet scores [r] (eq. 11); undefined before any importance was gathered.
  torch::Tensor scores(const std::string& a) {
    if (!ipt[a].count("lora_E")) return {};
    auto s = [&](const char* k) { return ipt[a][k] * unc[a][k]; };
    return s("lora_E").flatten() + s("lora_A").mean(1) + s("lora_B").mean(0);
  }
};

class AdaLoraTuner : public Tuner {
 public:
  std::string peft_type() const override { return "ADALORA"; }
  // peft 0.13's AdaLoraConfig (a LoraConfig plus the budget schedule), then our extension field.
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    using J = nlohmann::json;
    return with_common(
        {
            ConfigField{"init_r", T::Int, 12, "the rank every module starts with"}.at_least(1),
            ConfigField{"target_r", T::Int, 8, "the average rank the budget ends at (<= init_r)"}.at_least(1),
            ConfigField{"tinit", T::Int, 0, "steps of full rank before the budget starts to fall"}.at_least(0),
            ConfigField{"tfinal", T::Int, 0, "final steps at the target budget"}.at_least(0),
            ConfigField{"deltaT", T::Int, 1, "steps between two budget allocations"}.at_least(1),
            ConfigField{"beta1", T::Number, 0.85, "EMA factor of the importance (sensitivity)"}.in_closed_range(0, 1),
            ConfigField{"beta2", T::Number, 0.85, "EMA factor of its uncertainty"}.in_closed_range(0, 1),
            ConfigField{"orth_reg_weight", T::Number, 0.5, "weight of the orthogonality regulariser on P and Q"}.at_least(0),
            ConfigField{"total_step", T::Int, nullptr, "the run's length in steps; null: peft train fills it in"}
                .at_least(1)
                .or_null(),
            ConfigField{"r", T::Int, 8, "LoraConfig's r (AdaLoRA uses init_r)"}.at_least(1),
            ConfigField{"lora_alpha", T::Number, 8, "scale numerator (alpha / r)"},
            ConfigField{"lora_dropout", T::Number, 0.0, "dropout on the adapter's input"}.in_range(0, 1),
            ConfigField{"bias", T::String, "none", "biases that train (AdaLoRA: \"none\" only)"},
            ConfigField{"use_rslora", T::Bool, false, "rank-stabilised scaling"},
            ConfigField{"use_dora", T::Bool, false, "not supported with AdaLoRA: false"},
            ConfigField{"init_lora_weights", T::Any, true, "as LoRA's"}.one_of({true, false, "gaussian", "pissa", "olora", "loftq"}),
            ConfigField{"loftq_config", T::Object, J::object(), "not supported with AdaLoRA: {}"}.or_null(),
            ConfigField{"rank_pattern", T::Any, nullptr, "the ranks a finished run kept (not supported: null)"}.or_null(),
            ConfigField{"alpha_pattern", T::Object, J::object(), "module-name pattern -> lora_alpha"}.or_null(),
            ConfigField{"layer_replication", T::Any, nullptr, "not supported: null"}.or_null(),
            ConfigField{"megatron_config", T::Any, nullptr, "not used"}.or_null(),
            ConfigField{"megatron_core", T::String, "megatron.core", "not used"}.or_null(),
            common_field("exclude_modules").extension(),
        },
        {"fan_in_fan_out", "target_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
         "base_model_name_or_path", "revision", "task_type", "inference_mode", "auto_mapping"});
  }
  std::vector<std::string> default_roles() const override { return {role::kAttnQ, role::kAttnV}; }
  void validate(const nlohmann::json& c) const override {
    PEFT_CHECK(c["target_r"].get<int64_t>() <= c["init_r"].get<int64_t>(), "adapter config: field 'target_r' (",
               c["target_r"].get<int64_t>(), ") must be <= init_r (", c["init_r"].get<int64_t>(), ")");
    PEFT_CHECK(!c["use_dora"].get<bool>(), "adapter config: field 'use_dora': AdaLoRA does not support DoRA");
    PEFT_CHECK(c["bias"] == "none", "adapter config: field 'bias': only 'none' is supported");
    PEFT_CHECK(c["rank_pattern"].is_null(), "adapter config: field 'rank_pattern' (the ranks a finished AdaLoRA run kept, "
               "with tensors cut to them) is not supported; save the adapter with its full init_r tensors");
    PEFT_CHECK(c["layer_replication"].is_null(), "adapter config: field 'layer_replication' is not supported");
    PEFT_CHECK(c["loftq_config"].is_null() || c["loftq_config"].empty(), "adapter config: field 'loftq_config' is not supported");
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    wrap<AdaLoraLinear>(slot, [&](AdaLoraLinear& layer) {
      layer.add(name, c["init_r"].get<int64_t>(), c["lora_alpha"].get<double>(), c["lora_dropout"].get<double>(),
                 c["orth_reg_weight"].get<double>(), c["init_lora_weights"] != false);
    });
  }
  /// The rank schedule spans the run (sec. 3.3): total_step defaults to the run's length.
  void prepare_training_config(nlohmann::json& c, const TrainingSetup& setup) const override {
    if (!c.contains("total_step") || c["total_step"].is_null()) c["total_step"] = setup.total_steps;
  }
  void on_step(PeftModel& pm, const std::string& name, int64_t step, bool before) const override {
    if (!before) return;
    auto& c = pm.adapter(name).config;
    PEFT_CHECK(c["total_step"].is_number_integer(), "AdaLoRA: set total_step in the adapter config (the training length)");
    const int64_t total = c["total_step"], tinit = c["tinit"], tfinal = c["tfinal"], dT = c["deltaT"];
    const int64_t init_r = c["init_r"], target_r = c["target_r"];
    std::vector<AdaLoraLinear*> layers;
    for (auto& kv : pm.tuner_layers())
      if (auto* l = dynamic_cast<AdaLoraLinear*>(kv.second); l && l->has_adapter(name)) layers.push_back(l);
    for (auto* l : layers) l->update_importance(name, c["beta1"].get<double>(), c["beta2"].get<double>());
    const int64_t n = static_cast<int64_t>(layers.size()), init_bgt = init_r * n, target_bgt = target_r * n;
    int64_t budget;
    bool mask;
    if (step <= tinit) {
      return;
    } else if (step > total - tfinal) {
      budget = target_bgt;
      mask = true;
    } else {
      double mul = 1.0 - double(step - tinit) / double(std::max<int64_t>(1, total - tfinal - tinit));
      budget = static_cast<int64_t>((init_bgt - target_bgt) * mul * mul * mul + target_bgt);
      mask = step % dT == 0;
    }
    if (!mask || budget >= init_bgt) return;
    std::vector<torch::Tensor> all;
    for (auto* l : layers) {
      auto s = l->scores(name);
      if (!s.defined()) return;
      all.push_back(s);
    }
    torch::NoGradGuard ng;
    auto cat = torch::cat(all);
    auto thr = std::get<0>(torch::kthvalue(cat, init_bgt - budget)).item<double>();
    for (size_t i = 0; i < layers.size(); ++i)
      layers[i]->param(name, "lora_E").masked_fill_((all[i] <= thr).unsqueeze(1), 0.0);
  }
};

PEFT_REGISTER_TUNER(AdaLoraTuner);
PEFT_REGISTER_METHOD("adalora", {{"peft_type", "ADALORA"}});

}  // namespace
}  // namespace peft
