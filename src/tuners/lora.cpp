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
#include <torch/torch.h>

#include <cmath>
#include <regex>

#include "peft/error.h"
#include "models/quant_linear.h"
#include "peft/tuner.h"
#include "peft/precision.h"
#include "tuners/loftq.h"
#include "tuners/lora_bias.h"
#include "tuners/patterns.h"

namespace peft {
namespace {

struct LoraOptions {
  int64_t r = 8;
  double alpha = 8, scaling = 1, dropout = 0;
  bool dora = false, fa = false, dylora = false, rslora = false, gate = false;
  double delta_lambda = 0;
  int64_t delta_start = 0;
  std::string init = "default";  // default | gaussian | pissa | olora | loftq | false(B and A random: test use)
  int64_t loftq_bits = 4, loftq_iter = 1;
};

class LoraLinear : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::map<std::string, LoraOptions> opt;
  // Base change made on the adapter's behalf: W = W0 + delta_coef·(B A) + res_coef·(B0 A0).
  std::map<std::string, torch::Tensor> res_A, res_B, prev_BA;
  std::map<std::string, double> res_coef;
  std::map<std::string, torch::Tensor> dora_norm;  // row norms used at merge time

  std::string method() const override { return opt.empty() ? "lora" : (opt.begin()->second.dora ? "dora" : "lora"); }

  void add(const std::string& a, const LoraOptions& o, bool loading) {
    opt[a] = o;
    Linear& lin = base_linear();
    // A quantized base (models/quant_linear.h) has no float weight to decompose, normalise or update.
    if (auto* q = as_quantized(&lin)) {
      PEFT_CHECK(!((o.init == "pissa" || o.init == "olora") && !loading) && !o.dora && o.delta_lambda <= 0,
                 o.dora ? "DoRA" : o.delta_lambda > 0 ? "Delta-LoRA" : o.init == "pissa" ? "PiSSA" : "OLoRA",
                 " needs the float base weight; the base is quantized (", quant::quant_type_name(q->type),
                 "): use plain LoRA (or rsLoRA, LoRA-FA, DyLoRA) on a quantized base, or load it in float");
      // A saved LoftQ adapter over a quantized base takes that base as the one it was made for.
      PEFT_CHECK(o.init != "loftq" || loading, "LoftQ needs the float base weight to quantize; the base is already "
                 "quantized (", quant::quant_type_name(q->type), "): load the float model (peft train --quantize "
                 "nf4 does so for LoftQ and quantizes after the initialisation)");
    }
    const int64_t in = lin.in_features, out = lin.out_features, r = o.r;
    auto W = lin.weight_out_in();
    auto dt = trainable_dtype(W.scalar_type());  // adapters in float32 on a half base
    torch::NoGradGuard ng;
    torch::Tensor A, B;
    if (!loading && (o.init == "pissa" || o.init == "olora")) {
      auto Wf = W.to(torch::kFloat32);
      if (o.init == "pissa") {
        auto svd = torch::linalg_svd(Wf, /*full_matrices=*/false);
        auto U = std::get<0>(svd), S = std::get<1>(svd), Vh = std::get<2>(svd);
        PEFT_CHECK(r <= S.size(0), "PiSSA: r = ", r, " exceeds the rank bound ", S.size(0));
        auto Sr = S.slice(0, 0, r) / o.scaling;
        A = torch::diag(Sr.sqrt()).matmul(Vh.slice(0, 0, r));
        B = U.slice(1, 0, r).matmul(torch::diag(Sr.sqrt()));
      } else {
        auto qr = torch::linalg_qr(Wf);
        auto Q = std::get<0>(qr), R = std::get<1>(qr);
        PEFT_CHECK(r <= Q.size(1), "OLoRA: r = ", r, " exceeds min(in, out) = ", Q.size(1));
        A = R.slice(0, 0, r).contiguous();
        B = Q.slice(1, 0, r).contiguous();
      }
      W.sub_((o.scaling * B.matmul(A)).to(dt));  // the base keeps the residual
      res_A[a] = A.clone().to(dt);
      res_B[a] = B.clone().to(dt);
      res_coef[a] = -o.scaling;
    } else if (o.init == "loftq") {
      // peft re-runs LoftQ when it loads such an adapter, so the base becomes dequant(Q_T) again
      // (deterministic); the factors then come from the file.
      if (!as_quantized(&lin)) {
        auto lq = loftq_decompose(W, o.loftq_bits, r, o.loftq_iter, /*factors=*/!loading);
        W.copy_(lq.base.to(W.scalar_type()));
        A = lq.A.defined() ? lq.A.contiguous() : lq.A;  // slices of the SVD's factors
        B = lq.B.defined() ? lq.B.contiguous() : lq.B;
      }
      if (!A.defined()) {
        A = torch::zeros({r, in});
        B = torch::zeros({out, r});
      }
    } else if (o.init == "gaussian") {
      A = torch::randn({r, in}) / static_cast<double>(r);
      B = torch::zeros({out, r});
    } else {
      A = kaiming_uniform({r, in}, in);
      B = o.init == "false" ? kaiming_uniform({out, r}, r) : torch::zeros({out, r});
    }
    add_param(a, "lora_A.weight", A.to(dt), !o.fa);
    add_param(a, "lora_B.weight", B.to(dt));
    if (o.gate) {
      add_param(a, "lora_gate.weight", kaiming_uniform({1, in}, in).to(dt));
      add_param(a, "lora_gate.bias", kaiming_uniform({1}, in).to(dt));
    }
    if (o.dora) add_param(a, "lora_magnitude_vector", row_norm(W.to(torch::kFloat32) + o.scaling * B.matmul(A)).to(dt));
    if (o.delta_lambda > 0) {  // Delta-LoRA: track B_K A_K, the product at the first base update
      res_A[a] = param(a, "lora_A.weight").clone();
      res_B[a] = param(a, "lora_B.weight").clone();
      res_coef[a] = 0;
      prev_BA[a] = B.matmul(A).to(dt);
    }
  }
  std::set<std::string> delta_started;

  static torch::Tensor row_norm(const torch::Tensor& W) { return W.norm(2, {1}); }

  torch::Tensor delta_weight(const std::string& a) override {
    auto& o = opt.at(a);
    return o.scaling * scale_of(a) * param(a, "lora_B.weight").matmul(param(a, "lora_A.weight"));
  }

  /// The adapter's term added to base(x) (x: the rows it acts on).
  torch::Tensor term(const std::string& a, const torch::Tensor& x) {
    auto& o = opt.at(a);
    auto A = param(a, "lora_A.weight"), B = param(a, "lora_B.weight");
    double s = o.scaling;
    if (o.dylora && is_training() && o.r > 1) {
      int64_t b = torch::randint(1, o.r + 1, {1}).item<int64_t>();
      A = A.slice(0, 0, b);
      B = B.slice(1, 0, b);
      s = o.rslora ? o.alpha / std::sqrt((double)b) : o.alpha / (double)b;
    }
    s *= scale_of(a);
    auto xd = o.dropout > 0 ? torch::dropout(x, o.dropout, is_training()) : x;
    auto lora = torch::nn::functional::linear(torch::nn::functional::linear(xd, A), B) * s;
    if (o.gate) lora = lora * torch::sigmoid(torch::nn::functional::linear(x, param(a, "lora_gate.weight"), param(a, "lora_gate.bias")));
    if (!o.dora) return lora;
    auto W = base_linear().weight_out_in();
    auto norm = row_norm(W + s * B.matmul(A)).detach();
    auto mag = param(a, "lora_magnitude_vector") / norm;  // [out]
    // (m/n)(x W^T) + (m/n) s x A^T B^T + b, written as a correction of base(x) = x W^T + b.
    return (mag - 1) * (W.scalar_type() == xd.scalar_type() ? torch::nn::functional::linear(xd, W)
                                                              : frozen_linear(xd, W, {}, false, W.scalar_type())) +
           mag * lora;
  }

  torch::Tensor forward(const torch::Tensor& x) override {
    if (row_groups && gatherable()) return gathered_forward(x);
    return additive_forward(x, [this](const std::string& a, const torch::Tensor& xa) { return term(a, xa); });
  }

  /// A mixed batch whose adapters here are plain LoRA factors of one rank, two or more of them:
  /// computed in one pass for all rows (gathered_forward) instead of one product per adapter.
  bool gatherable() const {
    int64_t r = -1, groups = 0;
    for (auto& g : row_groups->rows) {
      auto it = opt.find(g.first);
      if (it == opt.end() || !adapters_.count(g.first)) continue;
      const auto& o = it->second;
      if (o.dora || o.gate || (is_training() && (o.dylora || o.dropout > 0))) return false;
      if (r >= 0 && o.r != r) return false;
      r = o.r;
      ++groups;
    }
    return groups >= 2;
  }
  /// Punica / S-LoRA's gathered form (Chen et al. 2023, "Punica", BGMV): each row's factors are
  /// gathered from the stacked adapters (a zero adapter for rows without one here) and
  /// y_i = base(x_i) + s_i (x_i A_i^T) B_i^T is two batched products for the whole batch.
  torch::Tensor gathered_forward(const torch::Tensor& x) {
    auto y = base_forward(x);
    const int64_t Bn = x.size(0);
    std::vector<torch::Tensor> As, Bs;
    std::vector<double> scales;
    std::vector<std::pair<torch::Tensor, int64_t>> assign;
    for (auto& g : row_groups->rows) {
      if (!adapters_.count(g.first) || !opt.count(g.first)) continue;
      As.push_back(param(g.first, "lora_A.weight"));
      Bs.push_back(param(g.first, "lora_B.weight"));
      scales.push_back(opt.at(g.first).scaling * scale_of(g.first));
      assign.emplace_back(rows_of(g.first, x), static_cast<int64_t>(As.size()) - 1);
    }
    const int64_t zero = static_cast<int64_t>(As.size());
    As.push_back(torch::zeros_like(As[0]));
    Bs.push_back(torch::zeros_like(Bs[0]));
    scales.push_back(0.0);
    auto sel = torch::full({Bn}, zero, torch::dtype(torch::kLong).device(x.device()));
    for (auto& [idx, k] : assign) sel.index_fill_(0, idx, k);
    auto A = torch::stack(As).index_select(0, sel);  // [B, r, in]
    auto Bf = torch::stack(Bs).index_select(0, sel);  // [B, out, r]
    auto s = torch::tensor(scales, A.options()).index_select(0, sel).view({Bn, 1, 1});
    auto x3 = x.reshape({Bn, -1, x.size(-1)});
    auto d = torch::bmm(torch::bmm(x3, A.transpose(1, 2)), Bf.transpose(1, 2)) * s;  // [B, T, out]
    return y + d.reshape(y.sizes()).to(y.scalar_type());
  }
  /// Per-row use needs the base left alone: not while the base carries part of the adapter
  /// (a fresh PiSSA / OLoRA init, Delta-LoRA's updates).
  bool supports_row_adapters(const std::string& a) const override { return !res_A.count(a); }
  void remove_adapter(const std::string& a) override {
    TunerLayer::remove_adapter(a);
    for (auto* m : {&res_A, &res_B, &prev_BA, &dora_norm}) m->erase(a);
    res_coef.erase(a);
    opt.erase(a);
    delta_started.erase(a);
  }

  bool can_merge() const override {
    for (auto& kv : opt) {
      if (kv.second.gate) return false;  // the gate depends on the input
      // DoRA's forward normalises the innermost base weight, not the output of an adapter it is
      // stacked on, so no merged weight reproduces it there.
      if (kv.second.dora && dynamic_cast<TunerLayer*>(base_layer.get())) return false;
    }
    return true;
  }
  void merge(const std::string& a) override {
    torch::NoGradGuard ng;
    auto W = base_linear().weight_out_in();
    auto d = delta_weight(a).to(W.scalar_type());
    if (opt.at(a).dora) {
      auto V = W + d;
      auto n = row_norm(V);
      dora_norm[a] = n;
      W.copy_((param(a, "lora_magnitude_vector") / n).unsqueeze(1) * V);
    } else {
      W.add_(d);
    }
  }
  void unmerge(const std::string& a) override {
    torch::NoGradGuard ng;
    auto W = base_linear().weight_out_in();
    auto d = delta_weight(a).to(W.scalar_type());
    if (opt.at(a).dora) W.copy_(W / (param(a, "lora_magnitude_vector") / dora_norm.at(a)).unsqueeze(1) - d);
    else W.sub_(d);
  }

  void after_step(const std::string& a, int64_t step) override {
    auto& o = opt.at(a);
    if (o.delta_lambda <= 0 || merged.count(a)) return;
    torch::NoGradGuard ng;
    auto BA = param(a, "lora_B.weight").matmul(param(a, "lora_A.weight"));
    if (step < o.delta_start) {  // not yet: B_K A_K is the latest product
      res_A[a] = param(a, "lora_A.weight").clone();
      res_B[a] = param(a, "lora_B.weight").clone();
      prev_BA[a] = BA;
      return;
    }
    base_linear().weight_out_in().add_(o.delta_lambda * (BA - prev_BA[a]));
    prev_BA[a] = BA;
    delta_started.insert(a);
    res_coef[a] = -o.delta_lambda;  // W = W0 + λ B A − λ B_K A_K
  }

  /// Saved as a rank-2r LoRA when the base carries part of the adapter (see the file comment).
  std::vector<std::pair<std::string, torch::Tensor>> adapter_tensors(const std::string& a) const override {
    auto t = TunerLayer::adapter_tensors(a);
    if (!res_A.count(a)) return t;
    auto& o = opt.at(a);
    auto A = const_cast<LoraLinear*>(this)->param(a, "lora_A.weight").detach();
    auto B = const_cast<LoraLinear*>(this)->param(a, "lora_B.weight").detach();
    double lam = delta_started.count(a) ? o.delta_lambda : 0.0;
    double c0 = res_coef.at(a);
    std::vector<std::pair<std::string, torch::Tensor>> out;
    for (auto& kv : t) {
      if (kv.first == "lora_A.weight") out.emplace_back(kv.first, torch::cat({A, res_A.at(a)}, 0));
      else if (kv.first == "lora_B.weight")
        out.emplace_back(kv.first, torch::cat({B * ((o.scaling + lam) / o.scaling), res_B.at(a) * (c0 / o.scaling)}, 1));
      else out.push_back(kv);
    }
    return out;
  }
};

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
    o.rslora = c["use_rslora"].get<bool>();
    o.scaling = o.rslora ? o.alpha / std::sqrt((double)o.r) : o.alpha / (double)o.r;
    o.dropout = c["lora_dropout"].get<double>();
    o.dora = c["use_dora"].get<bool>();
    o.fa = c.value("lora_fa", false);
    o.dylora = c.value("dylora", false);
    o.gate = c.value("lora_gate", false);
    o.delta_lambda = c.value("delta_lora_lambda", 0.0);
    o.delta_start = c.value("delta_lora_start", 0);
    auto& init = c["init_lora_weights"];
    o.init = init.is_string() ? init.get<std::string>() : (init.get<bool>() ? "default" : "false");
    if (o.init == "loftq") {
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
