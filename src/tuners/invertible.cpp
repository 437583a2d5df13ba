// Invertible adapters (invertible.h): the NICE coupling block, applied to the token embeddings by
// an input adapter and undone at the final norm's output by a slot wrapper that shares its tensors.
#include "tuners/invertible.h"

#include <torch/torch.h>

#include <algorithm>
#include <map>

#include "peft/error.h"
#include "peft/precision.h"

namespace peft {

InvertibleAdapter::InvertibleAdapter(int64_t hidden, double reduction_factor, std::string act, bool init_weights)
    : act_(std::move(act)) {
  h1_ = hidden / 2;
  h2_ = hidden - h1_;
  const int64_t f = static_cast<int64_t>(h1_ / reduction_factor), g = static_cast<int64_t>(h2_ / reduction_factor);
  PEFT_CHECK(f >= 1 && g >= 1, "adapter config: field 'inv_adapter_reduction_factor' (", reduction_factor,
             ") leaves no width for the coupling networks of a hidden size ", hidden);
  // nn.Linear(in, out): weight [out, in], weight and bias U(-1/sqrt(in), 1/sqrt(in)).
  auto linear = [&](const std::string& n, int64_t in, int64_t out, bool zero) {
    reg(n + ".weight", zero ? torch::zeros({out, in}) : kaiming_uniform({out, in}, in));
    reg(n + ".bias", zero ? torch::zeros({out}) : kaiming_uniform({out}, in));
  };
  linear("F.0", h2_, f, false);
  linear("F.2", f, h1_, init_weights);
  linear("G.0", h1_, g, false);
  linear("G.2", g, h2_, init_weights);
}

torch::Tensor InvertibleAdapter::couple(const torch::Tensor& x, bool rev) {
  auto xf = x.to(params_.begin()->second.scalar_type());  // the adapter's dtype (float32 on a half base)
  auto a = xf.slice(-1, 0, h1_), b = xf.slice(-1, h1_);
  torch::Tensor o1, o2;
  if (!rev) {
    o1 = a + net("F", b);
    o2 = b + net("G", o1);
  } else {
    o2 = b - net("G", a);
    o1 = a - net("F", o2);
  }
  return torch::cat({o1, o2}, -1).to(x.scalar_type());
}

void InvertibleAdapter::apply(PretrainedModel& model, ModelInput& in, KVCache&) {
  if (!in.inputs_embeds.defined()) {
    PEFT_CHECK(in.input_ids.defined(), "invertible adapter: input_ids or inputs_embeds required");
    in.inputs_embeds = model.embed_tokens(in.input_ids);
    in.input_ids = torch::Tensor();
  }
  in.inputs_embeds = couple(in.inputs_embeds, /*rev=*/false);
}

TensorMap InvertibleAdapter::saved_tensors() const {
  TensorMap out;
  for (auto& kv : params_) out["invertible_adapter." + kv.first] = kv.second.detach().clone();
  return out;
}

void InvertibleAdapter::load_saved(const TensorMap& t, const std::string& source) {
  torch::NoGradGuard ng;
  for (auto& kv : params_) {
    const std::string key = "invertible_adapter." + kv.first;
    auto it = t.find(key);
    PEFT_CHECK(it != t.end(), source, ": tensor '", key, "' is missing (the config has inv_adapter set)");
    PEFT_CHECK(it->second.sizes() == kv.second.sizes(), source, ": tensor '", key, "' has shape ", it->second.sizes(),
               " but the model needs ", kv.second.sizes());
    kv.second.copy_(it->second);
  }
}

void InvertibleAdapter::reg(const std::string& key, torch::Tensor t) {
  // Module parameter names cannot hold dots: F.0.weight is registered as F_0_weight.
  std::string n = key;
  std::replace(n.begin(), n.end(), '.', '_');
  params_[key] = register_parameter(n, t);
}

torch::Tensor InvertibleAdapter::net(const char* which, const torch::Tensor& x) {
  const std::string w = which;
  auto h = torch::nn::functional::linear(x, params_.at(w + ".0.weight"), params_.at(w + ".0.bias"));
  return torch::nn::functional::linear(activation(act_, h), params_.at(w + ".2.weight"), params_.at(w + ".2.bias"));
}

namespace {

/// A_inv^{-1} on the output of the final norm, for each live adapter in reverse order (the last
/// applied on the embeddings is undone first).
class InvertibleInverse : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::map<std::string, std::shared_ptr<InvertibleAdapter>> blocks;
  std::string method() const override { return "invertible_adapter"; }
  void add(const std::string& a, std::shared_ptr<InvertibleAdapter> b) {
    blocks[a] = std::move(b);
    adapters_.insert(a);
  }
  void remove_adapter(const std::string& a) override {
    TunerLayer::remove_adapter(a);
    blocks.erase(a);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto y = base_forward(x);
    auto live = live_adapters();
    for (auto it = live.rbegin(); it != live.rend(); ++it) y = blocks.at(*it)->couple(y, /*rev=*/true);
    return y;
  }
};

}  // namespace

void add_invertible_adapter(PeftModel& pm, const Tuner& tuner, const std::string& name, const nlohmann::json& c) {
  if (!c.contains("inv_adapter") || c["inv_adapter"].is_null()) return;
  auto& model = *pm.model;
  PEFT_CHECK(!model.is_encoder_decoder() && model.roles().count(role::kNormFinal),
             "adapter config: field 'inv_adapter': invertible adapters need a decoder with a final norm (role '",
             role::kNormFinal, "') where the inverse goes; model type '", model.model_type(), "' has none");
  PEFT_CHECK(!pm.adapter(name).input, "adapter config: field 'inv_adapter': not supported together with another "
             "model-level component (prompt/prefix tuning, VeRA, LoRA biases) of the same adapter");
  auto slots = pm.select_slots(tuner, {{"target_modules", nlohmann::json::array({role::kNormFinal})}});
  PEFT_CHECK(slots.size() == 1, "invertible adapter: role 'norm.final' (", model.roles().at(role::kNormFinal),
             ") of model type '", model.model_type(), "' selects ", slots.size(), " modules, expected one");
  auto block = std::make_shared<InvertibleAdapter>(model.dims().hidden_size, c["inv_adapter_reduction_factor"].get<double>(),
                                                   c["non_linearity"].get<std::string>(), c["init_weights"].get<bool>());
  wrap<InvertibleInverse>(slots[0], [&](InvertibleInverse& l) { l.add(name, block); });
  pm.set_input_adapter(name, block);
}

}  // namespace peft
