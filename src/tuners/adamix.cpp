// AdaMix (Wang et al. 2022, "AdaMix: Mixture-of-Adaptations for Parameter-efficient Model
// Tuning", sec. 3): M copies of a sequential bottleneck adapter per location, with the down and
// up projections routed independently:
//   training (sec. 3.2, stochastic routing): h + W_up^(j) f(W_down^(i) h), i, j ~ U{1..M} drawn
//     afresh at every forward and every location;
//   inference (sec. 3.4, adaptation merging): the copies' weights are averaged, one adapter
//     h + mean_j W_up^(j) f(mean_i W_down^(i) h).
// Placed after the FFN output (role "mlp.down") unless target_modules says otherwise; W_up
// starts at zero, so the model starts as the base.
// Export (`peft export`, src/tuners/export.h): the trained adapter is written as the plain
// BOTTLENECK adapter it is at inference (sec. 3.4: the averaged weights, Pfeiffer placement on
// the same modules, same non-linearity); it gives the AdaMix model's eval-mode logits bit for bit.
// Consistency regulariser (sec. 3.3, "Consistency regularization"): while training with labels,
// the tuner's loss term (Tuner::loss_term) runs the model a second time on the same batch (two
// independent routings A, B), and the loss PeftModel::forward returns is
//   loss = loss(A) + w * 1/2 (KL(p_B || p_A) + KL(p_A || p_B)),   w = consistency_weight,
// the logits being A's. As in the official code (microsoft/AdaMix, `symmetric_KL_loss` in
// RobertaForSequenceClassification and in the NLG GPT2LMModel): only the first routing's task
// loss is kept, each KL's target distribution is a stop-gradient, and the KL is summed over the
// classes / vocabulary and averaged over the examples (classification) or over the positions
// the loss counts (language modelling). Default 1, the official GLUE setting (its GPT-2 NLG code
// uses 100); 0 turns it off (one forward). Regression and multi-label heads have no softmax
// distribution: no regulariser there.
//
// Format (ours, peft_type "ADAMIX", peft_cpp_format_version 1): per wrapped module <m>
// (K = base_model.model.<m>, d = the module's output width, b the bottleneck):
//   K.adamix_down.weight [M, b, d]  K.adamix_down.bias [M, b]
//   K.adamix_up.weight   [M, d, b]  K.adamix_up.bias   [M, d]
// adapter_config.json: num_experts (M), bottleneck_size / reduction_factor (b), non_linearity,
// init_weights, consistency_weight (w above, a number >= 0), and the usual targeting fields.
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"
#include "tuners/bottleneck.h"
#include "tuners/export.h"

namespace peft {
namespace {

class AdaMixLayer : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::map<std::string, std::string> act;
  std::string method() const override { return "adamix"; }

  void add(const std::string& a, int64_t M, int64_t b, bool init_weights, const std::string& activation_name) {
    act[a] = activation_name;
    auto& lin = base_linear();
    const int64_t d = lin.out_features;
    auto dt = trainable_dtype(lin.weight.scalar_type());
    std::vector<torch::Tensor> dw, db, uw;
    for (int64_t m = 0; m < M; ++m) {  // each copy initialised as its own nn.Linear
      dw.push_back(kaiming_uniform({b, d}, d));
      db.push_back(kaiming_uniform({b}, d));
      uw.push_back(init_weights ? torch::zeros({d, b}) : kaiming_uniform({d, b}, b));
    }
    add_param(a, "adamix_down.weight", torch::stack(dw).to(dt));
    add_param(a, "adamix_down.bias", torch::stack(db).to(dt));
    add_param(a, "adamix_up.weight", torch::stack(uw).to(dt));
    add_param(a, "adamix_up.bias", torch::zeros({M, d}, dt));
  }
  /// One projection's weight and bias: a random copy while training, the mean at inference.
  std::pair<torch::Tensor, torch::Tensor> route(const std::string& a, const std::string& proj) {
    auto W = param(a, proj + ".weight"), bias = param(a, proj + ".bias");
    if (!is_training()) return {W.mean(0), bias.mean(0)};
    int64_t i = torch::randint(W.size(0), {1}).item<int64_t>();
    return {W[i], bias[i]};
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto h = base_forward(x);
    for (auto& a : live_adapters()) {
      auto down = route(a, "adamix_down"), up = route(a, "adamix_up");
      auto z = activation(act.at(a), torch::nn::functional::linear(h, down.first, down.second));
      h = h + torch::nn::functional::linear(z, up.first, up.second) * scale_of(a);
    }
    return h;
  }
};

/// The rows of `logits` the task loss counts, [N, C] in the loss's dtype: SeqCls one per example
/// (single-label classification only); causal LM logits[:, :-1] where labels[:, 1:] != -100 (the
/// shift of causal_lm_loss); seq2seq where labels != -100. Undefined where the outputs are no
/// softmax distribution (regression, multi-label, feature extraction).
torch::Tensor counted_rows(const torch::Tensor& logits, const torch::Tensor& labels, TaskType task) {
  const int64_t C = logits.size(-1);
  auto rows = logits.to(compute_dtype(logits.scalar_type()));
  if (task == TaskType::SeqCls) {
    bool integral = labels.scalar_type() == torch::kLong || labels.scalar_type() == torch::kInt;
    return integral && C > 1 && labels.numel() == logits.numel() / C ? rows.reshape({-1, C}) : torch::Tensor();
  }
  if (task == TaskType::CausalLM)
    return rows.slice(1, 0, -1).reshape({-1, C}).index({labels.slice(1, 1).reshape({-1}) != -100});
  if (task == TaskType::Seq2SeqLM) return rows.reshape({-1, C}).index({labels.reshape({-1}) != -100});
  return {};
}

/// 1/2 (KL(sg p2 || p1) + KL(sg p1 || p2)) (the official `symmetric_KL_loss`), summed over
/// classes and averaged over the rows; sg is a stop-gradient on the target distribution, so each
/// routing is pulled towards the other.
torch::Tensor symmetric_kl(const torch::Tensor& z1, const torch::Tensor& z2) {
  if (z1.size(0) == 0) return torch::zeros({}, z1.options());
  auto lp1 = torch::log_softmax(z1, -1), lp2 = torch::log_softmax(z2, -1);
  auto t1 = lp1.detach(), t2 = lp2.detach();
  auto kl = (t2.exp() * (t2 - lp1)).sum(-1) + (t1.exp() * (t1 - lp2)).sum(-1);
  return 0.5 * kl.mean();
}

class AdaMixTuner : public Tuner {
 public:
  std::string peft_type() const override { return "ADAMIX"; }
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    return with_common(
        {
            ConfigField{"num_experts", T::Int, 4, "adapter experts per module; training routes each forward to one at random"}
                .at_least(1),
            ConfigField{"reduction_factor", T::Number, 16, "bottleneck width = hidden / reduction_factor"}.above(0),
            ConfigField{"bottleneck_size", T::Int, nullptr, "the bottleneck width; null: from reduction_factor"}.at_least(1).or_null(),
            ConfigField{"non_linearity", T::String, "relu", "the activation between down and up projections"},
            ConfigField{"init_weights", T::Bool, true, "true: the up projections start at zero (the base model)"},
            ConfigField{"consistency_weight", T::Number, 1.0,
                        "w of the symmetric-KL consistency loss between two routed forwards (0: none)"}.at_least(0),
            ConfigField{"peft_cpp_format_version", T::Int, 1, "the file layout's version (this build reads 1)"}.one_of({1}),
        },
        {"target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save",
         "base_model_name_or_path", "task_type", "inference_mode"});
  }
  std::vector<std::string> default_roles() const override { return {role::kMlpDown}; }
  void validate(const nlohmann::json& c) const override { check_activation(c["non_linearity"].get<std::string>()); }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    // After the FFN only, also where the FFN's output suffix names the attention output (BERT).
    exclude_shadowed_attention_output(pm, pm.mutable_config(name));
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    wrap<AdaMixLayer>(slot, [&](AdaMixLayer& layer) {
      const int64_t hidden = pm.model->dims().hidden_size;
      int64_t b = c["bottleneck_size"].is_null()
                      ? std::max<int64_t>(1, static_cast<int64_t>(hidden / c["reduction_factor"].get<double>()))
                      : c["bottleneck_size"].get<int64_t>();
      layer.add(name, c["num_experts"].get<int64_t>(), b, c["init_weights"].get<bool>(), c["non_linearity"].get<std::string>());
    });
  }
  torch::Tensor loss_term(const nlohmann::json& c, const LossTermInput& in) const override {
    const double w = c["consistency_weight"].get<double>();
    if (w <= 0) return {};
    auto rows = counted_rows(in.output.logits, in.input.labels, in.task);
    if (!rows.defined()) return {};
    auto rows2 = counted_rows(in.forward_again().logits, in.input.labels, in.task);
    return w * symmetric_kl(rows, rows2);
  }
};

/// ADAMIX -> BOTTLENECK: each K.adamix_<proj>.<w> [M, ...] becomes K.adapter_<proj>.<w>, its
/// mean over the M experts (sec. 3.4); other tensors (modules_to_save copies) travel unchanged.
/// target_modules lists the wrapped modules by path, so placement needs no roles.
ExportedAdapter adamix_as_bottleneck(const nlohmann::json& c, const TensorMap& saved, const std::string& source) {
  ExportedAdapter e;
  nlohmann::json targets = nlohmann::json::array();
  int64_t b = 0;
  const std::string prefix = "base_model.model.", tag = ".adamix_", down = ".adamix_down.weight";
  torch::NoGradGuard ng;
  for (auto& [k, v] : saved) {
    auto pos = k.find(tag);
    if (pos == std::string::npos) {
      e.tensors[k] = v;
      continue;
    }
    PEFT_CHECK(v.dim() >= 2, source, ": tensor '", k, "' should have an expert dimension, has shape ", v.sizes());
    e.tensors[k.substr(0, pos) + ".adapter_" + k.substr(pos + tag.size())] = v.mean(0);
    if (k.size() == pos + down.size() && k.compare(pos, down.size(), down) == 0) {
      PEFT_CHECK(k.rfind(prefix, 0) == 0, source, ": tensor '", k, "' is not under ", prefix,
                 " (an AdaMix component of a COMPOSITE cannot be exported alone)");
      targets.push_back(k.substr(prefix.size(), pos - prefix.size()));
      b = v.size(1);
    }
  }
  PEFT_CHECK(!targets.empty(), source, ": no '*.adamix_down.weight' tensor; not an AdaMix adapter");
  e.config = find_tuner("BOTTLENECK")->defaults();
  e.config["adapter_type"] = "pfeiffer";
  e.config["bottleneck_size"] = b;
  e.config["non_linearity"] = c["non_linearity"];
  e.config["target_modules"] = targets;
  e.config["init_weights"] = true;
  for (auto k : {"base_model_name_or_path", "modules_to_save", "task_type"})
    if (c.contains(k)) e.config[k] = c[k];
  e.config["inference_mode"] = true;
  return e;
}

PEFT_REGISTER_TUNER(AdaMixTuner);
PEFT_REGISTER_METHOD("adamix", {{"peft_type", "ADAMIX"}, {"consistency_weight", 1.0}});
static const bool adamix_export_reg = register_adapter_exporter("ADAMIX", adamix_as_bottleneck);

}  // namespace
}  // namespace peft
