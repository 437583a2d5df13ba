// LoHa and LoKr (the LyCORIS low-rank products; survey §3, reparameterized family).
//
// LoHa (Hyeon-Woo et al. 2022, FedPara eq. 2): ΔW = (W1a W1b) ⊙ (W2a W2b) · α / r; the Hadamard
//   product of two rank-r matrices reaches rank r². Init: W1a, W1b, W2a Kaiming-uniform, W2b = 0.
// LoKr (KronA, Edalati et al. 2022; LyCORIS): ΔW = W1 ⊗ W2 reshaped to [out, in], with
//   out = a·c, in = b·d picked by factorization(); each factor optionally a rank-r product.
//   Init: W1 Kaiming-uniform, W2 = 0. peft 0.13 applies no α/r factor to LoKr; we follow newer
//   peft (α/r), identical whenever α == r (peft's default), and say so in the docs.
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"
#include "tuners/patterns.h"

namespace peft {
namespace {

/// Base of layers whose adapter is a dense ΔW: y = base(x) + x ΔW^T; merge adds ΔW.
class DeltaLinear : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::map<std::string, double> scaling, dropout;
  virtual torch::Tensor raw_delta(const std::string& a) = 0;  // [out, in] without scaling
  torch::Tensor delta_weight(const std::string& a) override { return raw_delta(a) * (scaling.at(a) * scale_of(a)); }
  torch::Tensor forward(const torch::Tensor& x) override {
    return additive_forward(x, [this](const std::string& a, const torch::Tensor& x) {
      auto xd = dropout[a] > 0 ? torch::dropout(x, dropout[a], is_training()) : x;
      return torch::nn::functional::linear(xd, delta_weight(a).to(x.scalar_type()));
    });
  }
  bool supports_row_adapters(const std::string&) const override { return true; }
  bool can_merge() const override { return true; }
  bool keeps_half_activations() const override { return true; }  // additive_forward casts
};

class LohaLinear : public DeltaLinear {
 public:
  using DeltaLinear::DeltaLinear;
  std::string method() const override { return "loha"; }
  void add(const std::string& a, int64_t r, double alpha, double drop, bool init_weights) {
    auto& l = base_linear();
    auto dt = trainable_dtype(l.weight.scalar_type());
    const int64_t in = l.in_features, out = l.out_features;
    scaling[a] = alpha / r;
    dropout[a] = drop;
    add_param(a, "hada_w1_a", kaiming_uniform({out, r}, r).to(dt));
    add_param(a, "hada_w1_b", kaiming_uniform({r, in}, in).to(dt));
    add_param(a, "hada_w2_a", kaiming_uniform({out, r}, r).to(dt));
    add_param(a, "hada_w2_b", init_weights ? torch::zeros({r, in}, dt) : kaiming_uniform({r, in}, in).to(dt));
  }
  torch::Tensor raw_delta(const std::string& a) override {
    return param(a, "hada_w1_a").matmul(param(a, "hada_w1_b")) * param(a, "hada_w2_a").matmul(param(a, "hada_w2_b"));
  }
};

/// LyCORIS' factorization(dim, factor): the split m·n = dim with m <= n closest to square
/// (m bounded by `factor` when it is positive).
std::pair<int64_t, int64_t> factorization(int64_t dim, int64_t factor) {
  if (factor > 0 && dim % factor == 0) {
    int64_t m = factor, n = dim / factor;
    return m > n ? std::make_pair(n, m) : std::make_pair(m, n);
  }
  if (factor < 0) factor = dim;
  int64_t m = 1, n = dim, length = m + n;
  while (m < n) {
    int64_t nm = m + 1;
    while (dim % nm != 0) ++nm;
    int64_t nn = dim / nm;
    if (nm + nn > length || nm > factor) break;
    m = nm;
    n = nn;
  }
  return m > n ? std::make_pair(n, m) : std::make_pair(m, n);
}

class LokrLinear : public DeltaLinear {
 public:
  using DeltaLinear::DeltaLinear;
  std::string method() const override { return "lokr"; }
  std::map<std::string, std::vector<int64_t>> shape;  // out, in
  void add(const std::string& a, int64_t r, double alpha, double drop, bool init_weights, bool decompose_both,
           int64_t factor) {
    auto& l = base_linear();
    auto dt = trainable_dtype(l.weight.scalar_type());
    const int64_t in = l.in_features, out = l.out_features;
    auto [om, on] = factorization(out, factor);
    auto [im, in_n] = factorization(in, factor);
    shape[a] = {out, in};
    scaling[a] = alpha / r;
    dropout[a] = drop;
    // peft's rules: W1 [om, im] is a product when decompose_both and r < max(om, im)/2;
    // W2 [on, in_n] is a product when r < max(on, in_n)/2.
    bool w1_split = decompose_both && r < std::max(om, im) / 2;
    bool w2_split = r < std::max(on, in_n) / 2;
    if (w1_split) {
      add_param(a, "lokr_w1_a", kaiming_uniform({om, r}, r).to(dt));
      add_param(a, "lokr_w1_b", kaiming_uniform({r, im}, im).to(dt));
    } else {
      add_param(a, "lokr_w1", kaiming_uniform({om, im}, im).to(dt));
    }
    if (w2_split) {
      add_param(a, "lokr_w2_a", kaiming_uniform({on, r}, r).to(dt));
      add_param(a, "lokr_w2_b", init_weights ? torch::zeros({r, in_n}, dt) : kaiming_uniform({r, in_n}, in_n).to(dt));
    } else {
      add_param(a, "lokr_w2", init_weights ? torch::zeros({on, in_n}, dt) : kaiming_uniform({on, in_n}, in_n).to(dt));
    }
  }
  torch::Tensor raw_delta(const std::string& a) override {
    auto w1 = has_param(a, "lokr_w1") ? param(a, "lokr_w1") : param(a, "lokr_w1_a").matmul(param(a, "lokr_w1_b"));
    auto w2 = has_param(a, "lokr_w2") ? param(a, "lokr_w2") : param(a, "lokr_w2_a").matmul(param(a, "lokr_w2_b"));
    auto& s = shape.at(a);
    return torch::kron(w1, w2).reshape({s[0], s[1]});
  }
};

// peft 0.13's LycorisConfig fields (LoHa and LoKr share them), then our extension field.
std::vector<ConfigField> lycoris_fields(std::vector<ConfigField> own) {
  using T = FieldType;
  std::vector<ConfigField> f = {
      ConfigField{"r", T::Int, 8, "rank of each factor pair"}.at_least(1),
      ConfigField{"alpha", T::Number, 8, "scale: dW times alpha / r"},
      ConfigField{"rank_dropout", T::Number, 0.0, "dropout over the rank (not supported: 0)"}.one_of({0}),
      ConfigField{"module_dropout", T::Number, 0.0, "dropout of the whole module (not supported: 0)"}.one_of({0}),
      ConfigField{"init_weights", T::Bool, true, "true: the update starts at zero (the base model)"},
      ConfigField{"rank_pattern", T::Object, nlohmann::json::object(), "module-name pattern -> r"}.or_null(),
      ConfigField{"alpha_pattern", T::Object, nlohmann::json::object(), "module-name pattern -> alpha"}.or_null(),
      ConfigField{"use_effective_conv2d", T::Bool, false, "Conv2d only (no effect on Linear layers)"},
      common_field("exclude_modules").extension(),
  };
  f.insert(f.end(), own.begin(), own.end());
  return with_common(std::move(f), {"target_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
                                    "base_model_name_or_path", "revision", "task_type", "inference_mode", "auto_mapping"});
}

class LohaTuner : public Tuner {
 public:
  std::string peft_type() const override { return "LOHA"; }
  std::vector<ConfigField> fields() const override { return lycoris_fields({}); }
  std::vector<std::string> default_roles() const override { return {role::kAttnQ, role::kAttnV}; }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    wrap<LohaLinear>(slot, [&](LohaLinear& layer) {
      layer.add(name, pattern_value<int64_t>(c["rank_pattern"], slot.path, c["r"].get<int64_t>()),
                 pattern_value<double>(c["alpha_pattern"], slot.path, c["alpha"].get<double>()), 0.0,
                 c["init_weights"].get<bool>());
    });
  }
};

class LokrTuner : public Tuner {
 public:
  std::string peft_type() const override { return "LOKR"; }
  std::vector<ConfigField> fields() const override {
    return lycoris_fields({
        ConfigField{"decompose_both", FieldType::Bool, false, "also factor the left Kronecker factor w1 = w1_a w1_b"},
        ConfigField{"decompose_factor", FieldType::Int, -1, "the factor of out and in for w1 (-1: the most balanced)"},
    });
  }
  std::vector<std::string> default_roles() const override { return {role::kAttnQ, role::kAttnV}; }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    wrap<LokrLinear>(slot, [&](LokrLinear& layer) {
      layer.add(name, pattern_value<int64_t>(c["rank_pattern"], slot.path, c["r"].get<int64_t>()),
                 pattern_value<double>(c["alpha_pattern"], slot.path, c["alpha"].get<double>()), 0.0,
                 c["init_weights"].get<bool>(), c["decompose_both"].get<bool>(), c["decompose_factor"].get<int64_t>());
    });
  }
};

PEFT_REGISTER_TUNER(LohaTuner);
PEFT_REGISTER_TUNER(LokrTuner);
PEFT_REGISTER_METHOD("loha", {{"peft_type", "LOHA"}});
PEFT_REGISTER_METHOD("lokr", {{"peft_type", "LOKR"}});

}  // namespace
}  // namespace peft
