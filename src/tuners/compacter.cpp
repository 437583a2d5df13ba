// Compacter (Karimi Mahabadi et al. 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter
// Layers", NeurIPS): a bottleneck adapter h <- h + U f(D h) whose projections are low-rank
// parameterized hypercomplex multiplication (LPHM) layers: the PHM layer of sec. 2.3,
// W = Σ_{i=1..n} A_i ⊗ B_i, with the low-rank B_i of sec. 3,
//   B_i = s_i t_i^T   (A_i ∈ R^{n x n}, s_i ∈ R^{k/n x r}, t_i ∈ R^{d/n x r}; r = 1 in the paper),
// with the "slow" rules A_i shared by every adapter layer (shared_phm_rule, sec. 3) and the
// "fast" rank-r factors (W_left = s, W_right = t^T) per layer. Compacter places adapters as
// Houlsby (after attention and FFN); Compacter++ (sec. 3) after the FFN only (Pfeiffer). Placement, AdapterDrop and the
// bottleneck size k = hidden / reduction_factor are the bottleneck adapters' (bottleneck.h);
// n must divide k and the adapted widths.
//
// Init: A_i and the factors uniform(±1/sqrt(fan_in)), the up projection's left factors s_i and
// its bias zero (init_weights), so U = 0 and the model starts as the base. The down and up
// projections each have their own shared set of rules (phm_rule_down, phm_rule_up): both are
// n x n, and separate sets cost 2 n^3 parameters for the whole model while letting the two
// directions differ.
//
// Format (peft_type "COMPACTER", peft_cpp_format_version 1): per wrapped module <m>
// (K = base_model.model.<m>), P in {compacter_down, compacter_up} of shape [out, in]:
//   K.P.W_left [n, out/n, r]   K.P.W_right [n, r, in/n]   K.P.bias [out]
//   K.P.phm_rule [n, n, n]     (only when shared_phm_rule is false)
// and, when shared, base_model.phm_rule_down / base_model.phm_rule_up [n, n, n].
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"
#include "tuners/bottleneck.h"
#include "tuners/shared.h"

namespace peft {
namespace {

torch::Tensor phm_rule_init(int64_t n) {
  double bound = 1.0 / std::sqrt(static_cast<double>(n));
  return torch::empty({n, n, n}).uniform_(-bound, bound);
}

/// The rules A_i shared by every layer (trainable, saved once).
class CompacterShared : public InputAdapter {
 public:
  explicit CompacterShared(int64_t n, torch::ScalarType dt) {
    down = register_parameter("phm_rule_down", phm_rule_init(n).to(dt));
    up = register_parameter("phm_rule_up", phm_rule_init(n).to(dt));
  }
  void apply(PretrainedModel&, ModelInput&, KVCache&) override {}
  TensorMap saved_tensors() const override { return {{"base_model.phm_rule_down", down}, {"base_model.phm_rule_up", up}}; }
  void load_saved(const TensorMap& t, const std::string& source) override {
    load_shared_tensors(saved_tensors(), t, source, "COMPACTER");
  }
  std::string method() const override { return "compacter"; }
  bool changes_input() const override { return false; }
  torch::Tensor down, up;
};

class CompacterLayer : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  struct Opts {
    bool parallel;
    double scaling;
    std::string act;
    std::shared_ptr<CompacterShared> shared;  // null: per-layer rules
  };
  std::map<std::string, Opts> opts;
  std::string method() const override { return "compacter"; }

  void add_phm(const std::string& a, const std::string& p, int64_t out, int64_t in, int64_t n, int64_t r, bool zero_left,
               bool own_rule, torch::ScalarType dt) {
    auto left = zero_left ? torch::zeros({n, out / n, r}) : kaiming_uniform({n, out / n, r}, r);
    add_param(a, p + ".W_left", left.to(dt));
    add_param(a, p + ".W_right", kaiming_uniform({n, r, in / n}, in / n).to(dt));
    add_param(a, p + ".bias", (zero_left ? torch::zeros({out}) : kaiming_uniform({out}, in)).to(dt));
    if (own_rule) add_param(a, p + ".phm_rule", phm_rule_init(n).to(dt));
  }
  // W = Σ_i A_i ⊗ B_i, elementwise W[a*p + b, c*q + e] = Σ_i A[i, a, c] B[i, b, e] with B_i = W_left_i W_right_i, W [out, in].
  torch::Tensor phm_weight(const std::string& a, const std::string& p, const torch::Tensor& rule) {
    auto B = torch::bmm(param(a, p + ".W_left"), param(a, p + ".W_right"));  // [n, out/n, in/n]
    const int64_t n = rule.size(0);
    return torch::einsum("iac,ibe->abce", {rule, B}).reshape({n * B.size(1), n * B.size(2)});
  }
  torch::Tensor rule(const std::string& a, const std::string& p, bool down) {
    auto& sh = opts.at(a).shared;
    return sh ? (down ? sh->down : sh->up) : param(a, p + ".phm_rule");
  }
  torch::Tensor adapter(const std::string& a, const torch::Tensor& x) {
    namespace F = torch::nn::functional;
    auto& o = opts.at(a);
    auto z = F::linear(x, phm_weight(a, "compacter_down", rule(a, "compacter_down", true)), param(a, "compacter_down.bias"));
    z = activation(o.act, z);
    z = F::linear(z, phm_weight(a, "compacter_up", rule(a, "compacter_up", false)), param(a, "compacter_up.bias"));
    return z * (o.scaling * scale_of(a));
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto h = base_forward(x);
    for (auto& a : live_adapters()) h = h + adapter(a, opts.at(a).parallel ? x : h);
    return h;
  }
};

class CompacterTuner : public Tuner {
 public:
  std::string peft_type() const override { return "COMPACTER"; }
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    return with_common(
        {
            ConfigField{"adapter_type", T::String, "houlsby",
                        "houlsby: after attention and FFN; pfeiffer: after the FFN; parallel: beside the FFN"}
                .one_of({"houlsby", "pfeiffer", "parallel"}),
            ConfigField{"reduction_factor", T::Number, 32, "bottleneck width = hidden / reduction_factor"}.above(0),
            ConfigField{"bottleneck_size", T::Int, nullptr, "the bottleneck width; null: from reduction_factor"}.at_least(1).or_null(),
            ConfigField{"phm_dim", T::Int, 4, "n: each projection is a sum of n Kronecker products A_i (n x n) x B_i"}.at_least(1),
            ConfigField{"phm_rank", T::Int, 1, "rank of the low-rank B_i = s_i t_i^T (Compacter's LPHM)"}.at_least(1),
            ConfigField{"shared_phm_rule", T::Bool, true, "the A_i are shared by every layer (Compacter) or per layer (PHM adapter)"},
            ConfigField{"non_linearity", T::String, "gelu", "the activation between down and up projections"},
            ConfigField{"scaling", T::Number, 1.0, "output scale s"},
            ConfigField{"adapter_drop_layers", T::Int, 0, "AdapterDrop: no adapter in the first n layers"}.at_least(0),
            ConfigField{"init_weights", T::Bool, true, "true: the up projection starts at zero (the base model)"},
            ConfigField{"peft_cpp_format_version", T::Int, 1, "the file layout's version (this build reads 1)"}.one_of({1}),
        },
        {"target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
         "base_model_name_or_path", "task_type", "inference_mode"});
  }
  void validate(const nlohmann::json& c) const override {
    validate_adapter_placement(c);
    check_activation(c["non_linearity"].get<std::string>());
  }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json& c) const override {
    resolve_adapter_placement(pm, name, "COMPACTER");
    const int64_t n = c["phm_dim"].get<int64_t>(), k = adapter_bottleneck_size(c, pm.model->dims().hidden_size);
    PEFT_CHECK(k % n == 0, "adapter config: field 'phm_dim' (", n, ") must divide the bottleneck size ", k,
               " (hidden ", pm.model->dims().hidden_size, " / reduction_factor, or bottleneck_size)");
    if (!c["shared_phm_rule"].get<bool>()) return;
    auto dt = torch::kFloat32;
    for (auto& p : pm.model->parameters()) {
      dt = trainable_dtype(p.scalar_type());
      break;
    }
    pm.set_input_adapter(name, std::make_shared<CompacterShared>(c["phm_dim"].get<int64_t>(), dt));
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    auto cur = slot.get();
    wrap<CompacterLayer>(slot, [&](CompacterLayer& layer) {
      const int64_t hidden = pm.model->dims().hidden_size, n = c["phm_dim"].get<int64_t>(), r = c["phm_rank"].get<int64_t>();
      const bool parallel = c["adapter_type"] == "parallel", shared = c["shared_phm_rule"].get<bool>();
      const int64_t out = layer_output_dim(cur.get(), hidden), din = parallel ? layer_input_dim(cur.get(), hidden) : out;
      const int64_t k = adapter_bottleneck_size(c, hidden);
      for (int64_t w : {din, out})
        PEFT_CHECK(w % n == 0, "adapter config: field 'phm_dim' (", n, ") must divide the adapted widths (", din, ", ",
                   out, ") at ", slot.path);
      auto dt = torch::kFloat32;
      for (auto& p : cur->parameters()) {
        dt = trainable_dtype(p.scalar_type());
        break;
      }
      layer.opts[name] = {parallel, c["scaling"].get<double>(), c["non_linearity"].get<std::string>(),
                           shared ? std::dynamic_pointer_cast<CompacterShared>(pm.adapter(name).input) : nullptr};
      const bool zero = c["init_weights"].get<bool>();
      layer.add_phm(name, "compacter_down", k, din, n, r, false, !shared, dt);
      layer.add_phm(name, "compacter_up", out, k, n, r, zero, !shared, dt);
    });
  }
};

PEFT_REGISTER_TUNER(CompacterTuner);
PEFT_REGISTER_METHOD("compacter", {{"peft_type", "COMPACTER"}, {"adapter_type", "houlsby"}});
PEFT_REGISTER_METHOD("compacter++", {{"peft_type", "COMPACTER"}, {"adapter_type", "pfeiffer"}});

}  // namespace
}  // namespace peft
