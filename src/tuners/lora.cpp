// LoRA and the variants that share its two factors (survey §3, reparameterized family).
//
// LoRA (Hu et al. 2021, eq. 3): h = W0 x + s · B A x, A ∈ R^{r×in}, B ∈ R^{out×r}, s = α / r;
//   init A Kaiming-uniform, B = 0, so the model starts as the base.
// rsLoRA (Kalajdzievski 2023): s = α / sqrt(r).
// DoRA (Liu et al. 2024, eq. 5): W' = m · (W0 + sBA) / ||W0 + sBA||_c, m initialised to ||W0||_c
//   (row norms of the [out, in] weight; the norm is detached as the paper's §4.3 suggests).
// LoRA-FA (Zhang et al. 2023): A frozen at its random init, only B trains.
// PiSSA (Meng et al. 2024): A, B from the top-r singular triplets of W0, W0 keeps the residual.
// OLoRA (Büyükakyüz 2024): A, B from the QR decomposition of W0 (B = Q[:, :r], A = R[:r]).
// LoftQ (Li et al. 2023, Algorithm 1; tuners/loftq.h): W0 becomes dequant(Q_T) of the
//   alternating quantization / SVD, A and B start from the SVD of the last residual.
// DyLoRA (Valipour et al. 2023): each training forward uses the first b ~ U{1..r} ranks with
//   s = α / b (nested-dropout style), so every prefix rank works at inference.
// Delta-LoRA (Zi et al. 2023, eq. 8): after each step W += λ (B_{t+1} A_{t+1} − B_t A_t).
// Gated LoRA (lora_gate; UniPELT, Mao et al. 2022, sec. 3.2): h = W0 x + G_L · s B A x with the
//   per-token gate G_L = sigmoid(W_g x + b_g), W_g [1, in] (nn.Linear init); not mergeable.
//
// Inits that change the base (PiSSA, OLoRA) and Delta-LoRA are saved as the plain rank-2r LoRA
// that gives the same weights on the unmodified base: W0 + s [B, c B0] [A; A0].
//
// This file is the tuner (config table, placement, injection, saved form); the layer is
// tuners/lora_layer.*, each init and variant an object in tuners/lora_variants.*.
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/tuner.h"
#include "tuners/lora_bias.h"
#include "tuners/lora_layer.h"
#include "tuners/patterns.h"

namespace peft {
namespace {

/// The bias of the Linear under any wrappers (undefined when it has none).
torch::Tensor innermost_bias(const LayerPtr& l) {
  auto* lin = innermost_linear(l.get());
  return lin ? lin->bias : torch::Tensor();
}

class LoraTuner : public Tuner {
 public:
  std::string peft_type() const override { return "LORA"; }
  // peft 0.13's LoraConfig, then our extension fields (kept out of adapter_config.json).
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    using J = nlohmann::json;
    return with_common(
        {
            ConfigField{"r", T::Int, 8, "rank of A [r, in] and B [out, r]"}.at_least(1),
            ConfigField{"lora_alpha", T::Number, 8, "scale: dW = (lora_alpha / r) B A (lora_alpha / sqrt(r) with use_rslora)"},
            ConfigField{"lora_dropout", T::Number, 0.0, "dropout on the adapter's input"}.in_range(0, 1),
            ConfigField{"bias", T::String, "none", "biases that train with the adapter"}.one_of({"none", "all", "lora_only"}),
            ConfigField{"use_rslora", T::Bool, false, "rank-stabilised scale lora_alpha / sqrt(r) (Kalajdzievski 2023)"},
            ConfigField{"use_dora", T::Bool, false, "weight-decomposed LoRA: a trained magnitude per output (Liu et al. 2024)"},
            ConfigField{"init_lora_weights", T::Any, true,
                        "true: A Kaiming-uniform, B zero; false: both random (tests); or an init that rewrites the base"}
                .one_of({true, false, "gaussian", "pissa", "olora", "loftq"}),
            ConfigField{"loftq_config", T::Object, J::object(), "{loftq_bits, loftq_iter} for init_lora_weights \"loftq\""}.or_null(),
            ConfigField{"rank_pattern", T::Object, J::object(), "module-name pattern -> r"}.or_null(),
            ConfigField{"alpha_pattern", T::Object, J::object(), "module-name pattern -> lora_alpha"}.or_null(),
            ConfigField{"layer_replication", T::Any, nullptr, "peft's layer stacking (not supported: must be null)"}.or_null(),
            ConfigField{"megatron_config", T::Any, nullptr, "Megatron parallel layers (not used on this path)"}.or_null(),
            ConfigField{"megatron_core", T::String, "megatron.core", "Megatron module name (not used)"}.or_null(),
            common_field("exclude_modules").extension(),
            ConfigField{"lora_fa", T::Bool, false, "LoRA-FA: A frozen at its init, only B trains (Zhang et al. 2023)"}.extension(),
            ConfigField{"dylora", T::Bool, false, "DyLoRA: a random rank b <= r per step (Valipour et al. 2023)"}.extension(),
            ConfigField{"delta_lora_lambda", T::Number, 0.0,
                        "Delta-LoRA: W also moves by lambda times the change of B A (Zi et al. 2023); 0: off"}
                .extension(),
            ConfigField{"delta_lora_start", T::Int, 0, "Delta-LoRA: the step of the first base update"}.at_least(0).extension(),
            ConfigField{"peft_cpp_residual", T::Bool, false, "set by the library: the base holds part of the adapter"}.extension(),
            ConfigField{"lora_gate", T::Bool, false, "a learned scalar gate on the LoRA term (UniPELT's gated LoRA)"}.extension(),
        },
        {"fan_in_fan_out", "target_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
         "base_model_name_or_path", "revision", "task_type", "inference_mode", "auto_mapping"});
  }
  std::vector<std::string> default_roles() const override { return {role::kAttnQ, role::kAttnV}; }
  void validate(const nlohmann::json& c) const override {
    auto& init = c["init_lora_weights"];
    PEFT_CHECK(c["layer_replication"].is_null(), "adapter config: field 'layer_replication' is not supported");
    auto& lq = c["loftq_config"];
    if (init == "loftq") {
      PEFT_CHECK(lq.is_object() && !lq.empty(), "adapter config: field 'init_lora_weights' = \"loftq\" needs "
                 "field 'loftq_config' (e.g. {\"loftq_bits\": 4, \"loftq_iter\": 1}), as peft's LoftQConfig");
      for (auto& kv : lq.items())
        PEFT_CHECK(kv.key() == "loftq_bits" || kv.key() == "loftq_iter", "adapter config: field 'loftq_config': key '",
                   kv.key(), "' is unknown (LoftQConfig has loftq_bits and loftq_iter)");
      auto bits = lq.value("loftq_bits", nlohmann::json(4)), iters = lq.value("loftq_iter", nlohmann::json(1));
      PEFT_CHECK(bits.is_number_integer() && (bits == 2 || bits == 4 || bits == 8),
                 "adapter config: field 'loftq_config': loftq_bits must be 2, 4 or 8, got ", bits.dump());
      PEFT_CHECK(iters.is_number_integer() && iters.get<int64_t>() >= 1,
                 "adapter config: field 'loftq_config': loftq_iter must be an integer >= 1, got ", iters.dump());
      PEFT_CHECK(!c.value("use_dora", false) && !c.value("lora_fa", false) && !c.value("dylora", false) &&
                     c.value("delta_lora_lambda", 0.0) <= 0,
                 "adapter config: field 'init_lora_weights' = \"loftq\" cannot be combined with use_dora, lora_fa, dylora or "
                 "delta_lora_lambda");
    } else {
      PEFT_CHECK(lq.is_null() || lq.empty(), "adapter config: field 'loftq_config' is set but init_lora_weights is "
                 "not \"loftq\" (it would be ignored)");
    }
    PEFT_CHECK(!(c.value("use_dora", false) && c.value("dylora", false)), "adapter config: DoRA and DyLoRA cannot be combined");
    PEFT_CHECK(!(c.value("use_dora", false) && c.value("lora_gate", false)), "adapter config: DoRA and lora_gate cannot be combined");
  }
  /// bias = "all" | "lora_only": the holder of the biases that train (tuners/lora_bias.h). "all"
  /// takes every parameter whose name contains "bias" (peft's rule), except in modules_to_save.
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json& c) const override {
    if (c["bias"] == "none") return;
    PEFT_CHECK(!pm.adapter(name).input, "adapter config: field 'bias' = ", c["bias"].dump(),
               ": not supported together with another model-level component (prompt/prefix tuning, VeRA)");
    auto holder = std::make_shared<TrainableBiases>(*pm.model, c["bias"] == "all");
    if (c["bias"] == "all") {
      const auto& mts = c["modules_to_save"];
      for (auto& p : pm.model->named_parameters()) {
        const std::string& n = p.key();
        if (n.find("bias") == std::string::npos || n.find("modules_to_save") != std::string::npos) continue;
        bool saved_module = false;  // inside a module that modules_to_save copies
        for (auto dot = n.find('.'); dot != std::string::npos && !saved_module; dot = n.find('.', dot + 1))
          saved_module = mts.is_array() && module_name_matches(mts, n.substr(0, dot));
        if (!saved_module) holder->add(p.value());
      }
    }
    pm.set_input_adapter(name, holder);
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    auto cur = slot.get();
    if (c["bias"] == "lora_only")
      std::dynamic_pointer_cast<TrainableBiases>(pm.adapter(name).input)->add(innermost_bias(cur));
    LoraOptions o;
    o.r = pattern_value<int64_t>(c["rank_pattern"], slot.path, c["r"].get<int64_t>());
    o.alpha = pattern_value<double>(c["alpha_pattern"], slot.path, c["lora_alpha"].get<double>());
    o.init = &lora_init_of(c);
    o.variants = lora_variants_of(c);
    o.scaling = o.scale_for(o.r);
    o.dropout = c["lora_dropout"].get<double>();
    o.delta_lambda = c.value("delta_lora_lambda", 0.0);
    o.delta_start = c.value("delta_lora_start", 0);
    if (o.init->name() == "loftq") {
      o.loftq_bits = c["loftq_config"].value("loftq_bits", o.loftq_bits);  // LoftQConfig's defaults: 4 bits, 1 iteration
      o.loftq_iter = c["loftq_config"].value("loftq_iter", o.loftq_iter);
    }
    auto layer = wrap<LoraLinear>(slot, [&](LoraLinear& l) { l.add(name, o, pm.loading()); });
    if (layer->res_A.count(name) && o.delta_lambda <= 0) pm.mutable_config(name)["peft_cpp_residual"] = true;
  }
  nlohmann::json saved_config(const nlohmann::json& cfg) const override {
    nlohmann::json c = cfg;
    bool residual = c.value("peft_cpp_residual", false) || c.value("delta_lora_lambda", 0.0) > 0;
    c.erase("delta_lora_start");
    if (residual) {  // saved as the equivalent plain LoRA of rank 2r with the same scaling
      c["r"] = c["r"].get<int64_t>() * 2;
      c["lora_alpha"] = c["use_rslora"].get<bool>() ? c["lora_alpha"].get<double>() * std::sqrt(2.0)
                                                    : c["lora_alpha"].get<double>() * 2;
      c["init_lora_weights"] = true;
      c.erase("peft_cpp_residual");
      c.erase("delta_lora_lambda");
    }
    return c;
  }
};

PEFT_REGISTER_TUNER(LoraTuner);
PEFT_REGISTER_METHOD("lora", {{"peft_type", "LORA"}});
PEFT_REGISTER_METHOD("rslora", {{"peft_type", "LORA"}, {"use_rslora", true}});
PEFT_REGISTER_METHOD("dora", {{"peft_type", "LORA"}, {"use_dora", true}});
PEFT_REGISTER_METHOD("pissa", {{"peft_type", "LORA"}, {"init_lora_weights", "pissa"}});
PEFT_REGISTER_METHOD("olora", {{"peft_type", "LORA"}, {"init_lora_weights", "olora"}});
PEFT_REGISTER_METHOD("loftq", {{"peft_type", "LORA"}, {"init_lora_weights", "loftq"},
                               {"loftq_config", {{"loftq_bits", 4}, {"loftq_iter", 1}}}});
PEFT_REGISTER_METHOD("lora-fa", {{"peft_type", "LORA"}, {"lora_fa", true}});
PEFT_REGISTER_METHOD("dylora", {{"peft_type", "LORA"}, {"dylora", true}});
PEFT_REGISTER_METHOD("delta-lora", {{"peft_type", "LORA"}, {"delta_lora_lambda", 0.5}, {"delta_lora_start", 0}});

}  // namespace
}  // namespace peft
