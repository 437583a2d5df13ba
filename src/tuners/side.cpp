// Ladder side-tuning (Sung et al. 2022, "LST: Ladder Side-Tuning for Parameter and Memory
// Efficient Transfer Learning", sec. 3.2, fig. 3): a small side network of width d_s = d / r reads
// the frozen backbone's hidden states h_0 .. h_L through down-projections; the backbone runs
// without any trainable parameter inside it, so autograd keeps none of its activations and no
// gradient flows through it. With the gated ladder connections of sec. 3.2,
//   s_0 = D_0 h_0,
//   z_i = μ_i s_{i-1} + (1 - μ_i) D_i h_i,   μ_i = sigmoid(α_i / T)  (α_i = 0 at init, T = 0.1),
//   s_i = z_i + F_i(LN_i(z_i))               (i = 1 .. L),
// and the side output is up-projected and added to the backbone's final (normed) hidden state
// before the head: y = Norm(h_L) + U LN(s_L). U and its bias start at zero, so the adapted model
// equals the base at init.
//
// Differences from the paper, and why:
// - The paper feeds U s_L to the head alone (the side network replaces the backbone's output);
//   adding it to the backbone's output keeps the base model at init and lets the head use both.
// - The side blocks F_i are per-token feed-forward blocks (d_s -> 4 d_s -> d_s, GELU) without
//   self-attention: the h_i already mix tokens, and a side attention would need the family's
//   mask and position scheme, which a model-agnostic tuner does not know.
// - Side weights start random (Kaiming-uniform), not from the pruned backbone.
//
// Placement through roles: "block.in" (a slot that reads each block's input, e.g. the
// pre-attention norm of a pre-norm block) gives h_0 .. h_{L-1}; "norm.final" (the norm before the
// head) gives h_L as its input and is where the side output is added. Families without these roles
// (post-norm BERT, encoder-decoders) are refused with the role's name.
//
// Format (peft_type "LST", peft_cpp_format_version 1): the side network is saved under the final
// norm's path K = base_model.model.<norm.final>, with stacked per-layer tensors:
//   K.lst_down.weight [L+1, d_s, d]  K.lst_down.bias [L+1, d_s]  K.lst_gate [L]
//   K.lst_ln.weight / K.lst_ln.bias [L, d_s]
//   K.lst_fc1.weight [L, 4 d_s, d_s]  K.lst_fc1.bias [L, 4 d_s]  K.lst_fc2.weight [L, d_s, 4 d_s]  K.lst_fc2.bias [L, d_s]
//   K.lst_norm.weight / K.lst_norm.bias [d_s]  K.lst_up.weight [d, d_s]  K.lst_up.bias [d]
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/tuner.h"

namespace peft {
namespace {

/// The detached backbone states of the current forward, shared by the taps and the side head.
class LstState : public InputAdapter {
 public:
  std::vector<torch::Tensor> taps;
  void apply(PretrainedModel&, ModelInput&, KVCache&) override { taps.clear(); }
  TensorMap saved_tensors() const override { return {}; }
  void load_saved(const TensorMap&, const std::string&) override {}
  std::string method() const override { return "lst"; }
  bool changes_input() const override { return false; }
};
using LstStatePtr = std::shared_ptr<LstState>;

/// Records the (detached) input of a block and passes it on unchanged.
class LstTap : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::map<std::string, LstStatePtr> state;
  std::string method() const override { return "lst"; }
  void add(const std::string& a, LstStatePtr s) {
    state[a] = std::move(s);
    adapters_.insert(a);
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    for (auto& a : live_adapters()) state.at(a)->taps.push_back(x.detach());
    return base_forward(x);
  }
};

/// The final norm plus the side network, whose output it adds.
class LstHead : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  std::map<std::string, LstStatePtr> state;
  std::map<std::string, double> temperature;
  std::string method() const override { return "lst"; }

  void add(const std::string& a, LstStatePtr s, int64_t L, int64_t d, int64_t ds, double T, bool init_weights,
           torch::ScalarType dt) {
    state[a] = std::move(s);
    temperature[a] = T;
    const int64_t f = 4 * ds;
    auto p = [&](const std::string& k, torch::Tensor v) { add_param(a, k, v.to(dt)); };
    p("lst_down.weight", kaiming_uniform({L + 1, ds, d}, d));
    p("lst_down.bias", kaiming_uniform({L + 1, ds}, d));
    p("lst_gate", torch::zeros({L}));
    p("lst_ln.weight", torch::ones({L, ds}));
    p("lst_ln.bias", torch::zeros({L, ds}));
    p("lst_fc1.weight", kaiming_uniform({L, f, ds}, ds));
    p("lst_fc1.bias", kaiming_uniform({L, f}, ds));
    p("lst_fc2.weight", kaiming_uniform({L, ds, f}, f));
    p("lst_fc2.bias", kaiming_uniform({L, ds}, f));
    p("lst_norm.weight", torch::ones({ds}));
    p("lst_norm.bias", torch::zeros({ds}));
    p("lst_up.weight", init_weights ? torch::zeros({d, ds}) : kaiming_uniform({d, ds}, ds));
    p("lst_up.bias", torch::zeros({d}));
  }

  // The side network over the detached states h_0 .. h_L (see the file comment).
  torch::Tensor side(const std::string& a, const std::vector<torch::Tensor>& h) {
    namespace F = torch::nn::functional;
    auto down_w = param(a, "lst_down.weight"), down_b = param(a, "lst_down.bias");
    auto ln_w = param(a, "lst_ln.weight"), ln_b = param(a, "lst_ln.bias");
    auto fc1_w = param(a, "lst_fc1.weight"), fc1_b = param(a, "lst_fc1.bias");
    auto fc2_w = param(a, "lst_fc2.weight"), fc2_b = param(a, "lst_fc2.bias");
    auto mu = torch::sigmoid(param(a, "lst_gate") / temperature.at(a));
    const int64_t L = mu.size(0), ds = down_w.size(1);
    auto s = F::linear(h[0], down_w[0], down_b[0]);
    for (int64_t i = 1; i <= L; ++i) {
      auto z = mu[i - 1] * s + (1 - mu[i - 1]) * F::linear(h[i], down_w[i], down_b[i]);
      auto u = torch::layer_norm(z, {ds}, ln_w[i - 1], ln_b[i - 1], 1e-5);
      s = z + F::linear(torch::gelu(F::linear(u, fc1_w[i - 1], fc1_b[i - 1])), fc2_w[i - 1], fc2_b[i - 1]);
    }
    s = torch::layer_norm(s, {ds}, param(a, "lst_norm.weight"), param(a, "lst_norm.bias"), 1e-5);
    return F::linear(s, param(a, "lst_up.weight"), param(a, "lst_up.bias")) * scale_of(a);
  }

  torch::Tensor forward(const torch::Tensor& x) override {
    auto y = base_forward(x);
    for (auto& a : live_adapters()) {
      auto& st = *state.at(a);
      std::vector<torch::Tensor> h = std::move(st.taps);
      st.taps.clear();
      h.push_back(x.detach());
      const int64_t want = param(a, "lst_down.weight").size(0);
      PEFT_CHECK(static_cast<int64_t>(h.size()) == want, "LST adapter '", a, "': the forward passed ", h.size() - 1,
                 " block inputs before the final norm, expected ", want - 1,
                 " (was the model called in pieces, or does a block skip its 'block.in' module?)");
      y = y + side(a, h).to(y.scalar_type());
    }
    return y;
  }
};

class LstTuner : public Tuner {
 public:
  std::string peft_type() const override { return "LST"; }
  nlohmann::json defaults() const override {
    return {{"base_model_name_or_path", nullptr}, {"gate_temperature", 0.1}, {"inference_mode", false},
            {"init_weights", true},               {"modules_to_save", nullptr}, {"peft_cpp_format_version", 1},
            {"peft_type", "LST"},                 {"reduction_factor", 8},   {"side_dim", nullptr},
            {"target_modules", nullptr},          {"task_type", nullptr}};
  }
  void validate(const nlohmann::json& c) const override {
    PEFT_CHECK(c["peft_cpp_format_version"] == 1, "adapter config: field 'peft_cpp_format_version' ",
               c["peft_cpp_format_version"].dump(), " is not supported (this build reads version 1)");
    PEFT_CHECK(c["reduction_factor"].is_number() && c["reduction_factor"].get<double>() > 0,
               "adapter config: field 'reduction_factor' must be > 0, got ", c["reduction_factor"].dump());
    PEFT_CHECK(c["side_dim"].is_null() || (c["side_dim"].is_number_integer() && c["side_dim"].get<int64_t>() > 0),
               "adapter config: field 'side_dim' must be a positive integer or null, got ", c["side_dim"].dump());
    PEFT_CHECK(c["gate_temperature"].is_number() && c["gate_temperature"].get<double>() > 0,
               "adapter config: field 'gate_temperature' must be > 0, got ", c["gate_temperature"].dump());
    PEFT_CHECK(c["target_modules"].is_null(), "adapter config: field 'target_modules' must be null for LST "
               "(the side network reads the model's 'block.in' and 'norm.final' roles)");
    PEFT_CHECK(c["init_weights"].is_boolean(), "adapter config: field 'init_weights' must be true or false");
  }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    auto roles = pm.model->roles();
    for (const char* r : {"block.in", "norm.final"})
      PEFT_CHECK(roles.count(r), "LST: model type '", pm.model->model_type(), "' has no '", r,
                 "' role (LST needs a pre-norm decoder: the input of each block and the final norm)");
    pm.set_input_adapter(name, std::make_shared<LstState>());
    // Kept in the stored config as resolved names; validate() wants null from users, so the saved
    // file drops it again (saved_config).
    pm.mutable_config(name)["target_modules"] = {roles["block.in"], roles["norm.final"]};
  }
  nlohmann::json saved_config(const nlohmann::json& cfg) const override {
    auto c = cfg;
    c["target_modules"] = nullptr;
    return c;
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    auto st = std::dynamic_pointer_cast<LstState>(pm.adapter(name).input);
    auto cur = slot.get();
    const auto final_norm = pm.model->roles()["norm.final"];
    if (module_name_matches(nlohmann::json::array({final_norm}), slot.path)) {
      auto head = std::dynamic_pointer_cast<LstHead>(cur);
      if (!head) head = std::make_shared<LstHead>(cur);
      const auto dims = pm.model->dims();
      const int64_t d = dims.hidden_size;
      const int64_t ds = c["side_dim"].is_null()
                             ? std::max<int64_t>(1, static_cast<int64_t>(d / c["reduction_factor"].get<double>()))
                             : c["side_dim"].get<int64_t>();
      auto dt = torch::kFloat32;
      for (auto& p : cur->parameters()) dt = p.scalar_type();
      head->add(name, st, dims.num_layers, d, ds, c["gate_temperature"].get<double>(), c["init_weights"].get<bool>(), dt);
      if (head != cur) slot.parent->replace_slot(slot.name, head);
    } else {
      auto tap = std::dynamic_pointer_cast<LstTap>(cur);
      if (!tap) tap = std::make_shared<LstTap>(cur);
      tap->add(name, st);
      if (tap != cur) slot.parent->replace_slot(slot.name, tap);
    }
  }
};

PEFT_REGISTER_TUNER(LstTuner);
PEFT_REGISTER_METHOD("lst", {{"peft_type", "LST"}});

}  // namespace
}  // namespace peft
