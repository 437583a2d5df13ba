// VeRA (Kopiczko et al. 2024, "Vector-based Random Matrix Adaptation", eq. 1):
// h = W0 x + Λ_b B Λ_d A x with A [r, in] and B [out, r] frozen random matrices shared by all
// layers (Kaiming-uniform from a seeded generator, exactly as peft draws them; saved with the
// adapter when save_projection is true, regenerated at load otherwise), and trainable
// vectors d [r] (init d_initial = 0.1) and b [out] (init 0, so the model starts as the base).
// Layers smaller than the shared matrices use their top-left slices, as peft does.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"
#include "tuners/shared.h"

namespace peft {
namespace {

/// The shared frozen projections (buffers, never trained), generated exactly as peft 0.13.2 does
/// (VeraModel._init_vera_A_vera_B): one CPU generator seeded with projection_prng_key draws
/// vera_A [r, in_max] and then, continuing, vera_B [out_max, r], each U(-b, b) with peft's
/// _kaiming_init bound b = sqrt(3) * sqrt(2) / sqrt(fan_in) (fan_in = the number of columns),
/// computed in double. Same generator (MT19937), same draw order, same ATen uniform_ as
/// PyTorch, so the values are bitwise peft's and an adapter saved without its projections
/// (save_projection = false) loads to the same model in both libraries.
class VeraShared : public InputAdapter {
 public:
  VeraShared(int64_t r, int64_t max_in, int64_t max_out, uint64_t seed, bool save_projection)
      : save_projection(save_projection) {
    auto gen = at::detail::createCPUGenerator(seed);
    auto mk = [&](int64_t rows, int64_t cols) {
      const double bound = std::sqrt(3.0) * (std::sqrt(2.0) / std::sqrt(static_cast<double>(cols)));
      return torch::empty({rows, cols}).uniform_(-bound, bound, gen);
    };
    A = register_buffer("vera_A", mk(r, max_in));
    B = register_buffer("vera_B", mk(max_out, r));
  }
  void apply(PretrainedModel&, ModelInput&, KVCache&) override {}
  /// The projections are in the file only with save_projection (peft's layout).
  TensorMap saved_tensors() const override {
    if (!save_projection) return {};
    return {{"base_model.vera_A", A}, {"base_model.vera_B", B}};
  }
  void load_saved(const TensorMap& t, const std::string& source) override {
    load_shared_tensors(saved_tensors(), t, source, "VeRA with save_projection");
  }
  std::string method() const override { return "vera"; }
  bool changes_input() const override { return false; }
  torch::Tensor A, B;
  bool save_projection;
};

class VeraLinear : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::map<std::string, std::shared_ptr<VeraShared>> shared;
  std::map<std::string, double> dropout;
  std::string method() const override { return "vera"; }

  /// init_weights (peft's): b = 0, d = d_initial; false leaves peft's raw init b = 1, d ~ N(0, 1).
  void add(const std::string& a, std::shared_ptr<VeraShared> s, double d_init, double drop, bool init_weights) {
    auto& l = base_linear();
    auto dt = trainable_dtype(l.weight.scalar_type());
    shared[a] = s;
    dropout[a] = drop;
    const int64_t r = s->A.size(0);
    add_param(a, "vera_lambda_b", init_weights ? torch::zeros({l.out_features}, dt) : torch::ones({l.out_features}, dt));
    add_param(a, "vera_lambda_d", init_weights ? torch::full({r}, d_init, dt) : torch::randn({r}).to(dt));
  }
  std::pair<torch::Tensor, torch::Tensor> slices(const std::string& a) {
    auto& l = base_linear();
    auto& s = *shared.at(a);
    return {s.A.slice(1, 0, l.in_features), s.B.slice(0, 0, l.out_features)};
  }
  torch::Tensor delta_weight(const std::string& a) override {
    auto [A, B] = slices(a);
    return (param(a, "vera_lambda_b").unsqueeze(1) * B) .matmul(param(a, "vera_lambda_d").unsqueeze(1) * A) * scale_of(a);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    return additive_forward(x, [this](const std::string& a, const torch::Tensor& x) {
      auto [A, B] = slices(a);
      auto xd = dropout[a] > 0 ? torch::dropout(x, dropout[a], is_training()) : x;
      auto h = torch::nn::functional::linear(xd, A.to(x.scalar_type())) * param(a, "vera_lambda_d");
      return torch::nn::functional::linear(h, B.to(x.scalar_type())) * param(a, "vera_lambda_b") * scale_of(a);
    });
  }
  bool supports_row_adapters(const std::string&) const override { return true; }
  bool can_merge() const override { return true; }
  bool keeps_half_activations() const override { return true; }  // additive_forward casts
};

class VeraTuner : public Tuner {
 public:
  std::string peft_type() const override { return "VERA"; }
  // peft 0.13's VeraConfig, then our extension fields.
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    return with_common(
        {
            ConfigField{"r", T::Int, 256, "rank of the shared frozen random projections A [r, in], B [out, r]"}.at_least(1),
            ConfigField{"d_initial", T::Number, 0.1, "initial value of the trained scaling vector lambda_d [r]"},
            ConfigField{"vera_dropout", T::Number, 0.0, "dropout on the adapter's input"}.in_range(0, 1),
            ConfigField{"projection_prng_key", T::Int, 0, "seed of the shared projections (peft's PRNG key)"},
            ConfigField{"save_projection", T::Bool, true, "store the projections in the adapter file"},
            ConfigField{"init_weights", T::Bool, true, "true: lambda_b = 0 (the base model)"},
            ConfigField{"bias", T::String, "none", "biases that train (VeRA: \"none\" only)"},
            common_field("exclude_modules").extension(),
        },
        {"fan_in_fan_out", "target_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
         "base_model_name_or_path", "revision", "task_type", "inference_mode", "auto_mapping"});
  }
  std::vector<std::string> default_roles() const override { return {role::kAttnQ, role::kAttnV}; }
  void validate(const nlohmann::json& c) const override {
    PEFT_CHECK(c["bias"] == "none", "adapter config: field 'bias' = ", c["bias"].dump(),
               ": VeRA supports only \"none\" (train biases with LoRA's bias or BitFit)");
  }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json& c) const override {
    // Size the shared matrices for the largest targeted layer.
    auto sel = TargetSelector::from_config(c, *pm.model, default_roles());
    int64_t max_in = 0, max_out = 0;
    for (auto& ref : find_slots(*pm.model)) {
      auto mod = ref.get();
      if (!sel.matches(ref.path, mod.get())) continue;
      if (auto* lin = innermost_linear(mod.get())) {
        max_in = std::max(max_in, lin->in_features);
        max_out = std::max(max_out, lin->out_features);
      }
    }
    PEFT_CHECK(max_in > 0, "VeRA: target_modules matched no Linear layer");
    pm.set_input_adapter(name, std::make_shared<VeraShared>(c["r"].get<int64_t>(), max_in, max_out,
                                                            c["projection_prng_key"].get<uint64_t>(),
                                                            c["save_projection"].get<bool>()));
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    wrap<VeraLinear>(slot, [&](VeraLinear& layer) {
      auto shared = std::dynamic_pointer_cast<VeraShared>(pm.adapter(name).input);
      layer.add(name, shared, c["d_initial"].get<double>(), c["vera_dropout"].get<double>(), c["init_weights"].get<bool>());
    });
  }
};

PEFT_REGISTER_TUNER(VeraTuner);
PEFT_REGISTER_METHOD("vera", {{"peft_type", "VERA"}, {"r", 32}});

}  // namespace
}  // namespace peft
