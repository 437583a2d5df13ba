// Ladder side-tuning (Sung et al. 2022, "LST: Ladder Side-Tuning for Parameter and Memory
// Efficient Transfer Learning", sec. 3.2, fig. 3): a small side network of width d_s = d / r reads
// the frozen backbone's hidden states h_0 .. h_L through down-projections; the backbone runs
// without any trainable parameter inside it, so autograd keeps none of its activations and no
// gradient flows through it. With the gated ladder connections of sec. 3.2,
//   s_0 = D_0 h_0,
//   z_i = μ_i s_{i-1} + (1 - μ_i) D_i h_i,   μ_i = sigmoid(α_i / T)  (α_i = 0 at init, T = 0.1),
//   s_i = z_i + F_i(LN_i(z_i))               (i = 1 .. L),
// and the side output is up-projected and added to the backbone's final (normed) hidden state
// before the head: y = Norm(h_L) + U LN(s_L) (post-norm stacks, whose h_L is normed already:
// y = h_L + U LN(s_L)). U and its bias start at zero, so the adapted model equals the base at init.
//
// Differences from the paper, and why:
// - The paper feeds U s_L to the head alone (the side network replaces the backbone's output);
//   adding it to the backbone's output keeps the base model at init and lets the head use both.
// - The side blocks F_i are per-token feed-forward blocks (d_s -> 4 d_s -> d_s, GELU) without
//   self-attention: the h_i already mix tokens, and a side attention would need the family's
//   mask and position scheme, which a model-agnostic tuner does not know.
// - Side weights start random (Kaiming-uniform), not from the pruned backbone.
// - On T5 only the decoder is laddered (below).
//
// Placement through roles (the tuner never names a family); a role's value is a module-name
// suffix or, when it starts with '^', a full-match regex over the module path:
// - pre-norm stacks (Llama, GPT-2, T5's decoder): "block.in" names the modules whose INPUT is
//   each block's input (the pre-attention norm), giving h_0 .. h_{L-1} in forward order;
//   "norm.final" (the norm before the head) gives h_L as its input, and the side output is
//   added to its output;
// - post-norm stacks (BERT, RoBERTa), used when "block.in" / "norm.final" are absent:
//   "block.out" names the modules whose OUTPUT is h_0 .. h_L (the embeddings' LayerNorm and each
//   block's last LayerNorm); the side output is added to the output of the last of them (in
//   module order), the encoder's last hidden state, before the pooler / classification head.
// L is the number of blocks the roles select (for T5, whose roles select the decoder only: the
// decoder's layer count), not ModelDims.num_layers.
//
// Encoder-decoders (T5): only the decoder is laddered (Sung et al.'s T5 side network also has an
// encoder half reading the backbone encoder). The frozen encoder reaches the side network
// through the frozen decoder's cross-attention, which every h_i of the decoder already contains.
// This keeps the tuner to one stack of one sequence length, and keeps cached generation exact:
// the encoder runs once, the decoder one token at a time, and a per-token side network over
// [B, 1, d] states gives what it gives over the whole sequence.
//
// Format (peft_type "LST", peft_cpp_format_version 1): the side network is saved under the path
// of the module it adds to, K = base_model.model.<that module> (Llama: model.norm; GPT-2:
// transformer.ln_f; T5: decoder.final_layer_norm; BERT: bert.encoder.layer.<L-1>.output.LayerNorm),
// with stacked per-layer tensors:
//   K.lst_down.weight [L+1, d_s, d]  K.lst_down.bias [L+1, d_s]  K.lst_gate [L]
//   K.lst_ln.weight / K.lst_ln.bias [L, d_s]
//   K.lst_fc1.weight [L, 4 d_s, d_s]  K.lst_fc1.bias [L, 4 d_s]  K.lst_fc2.weight [L, d_s, 4 d_s]  K.lst_fc2.bias [L, d_s]
//   K.lst_norm.weight / K.lst_norm.bias [d_s]  K.lst_up.weight [d, d_s]  K.lst_up.bias [d]
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"

namespace peft {
namespace {

/// Where one adapter's side network reads and writes, resolved from the roles in add_global,
/// and the detached backbone states of the current forward, shared by the taps and the head.
class LstState : public InputAdapter {
 public:
  std::vector<torch::Tensor> taps;
  int64_t num_layers = 0;      // L
  bool post_norm = false;      // taps read outputs ("block.out"), not inputs ("block.in")
  std::string head_path;       // the module whose output gets the side output (and gives h_L)
  void apply(PretrainedModel&, ModelInput&, KVCache&) override { taps.clear(); }
  TensorMap saved_tensors() const override { return {}; }
  void load_saved(const TensorMap&, const std::string&) override {}
  std::string method() const override { return "lst"; }
  bool changes_input() const override { return false; }
};
using LstStatePtr = std::shared_ptr<LstState>;

/// Records the (detached) input, or output in a post-norm stack, of a block's module and passes
/// the output on unchanged.
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
    auto y = base_forward(x);
    for (auto& a : live_adapters()) {
      auto& st = *state.at(a);
      st.taps.push_back((st.post_norm ? y : x).detach());
    }
    return y;
  }
};

/// The module before the head (final norm, or a post-norm stack's last LayerNorm) plus the side
/// network, whose output it adds.
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
    const auto base = base_forward(x);
    auto y = base;
    for (auto& a : live_adapters()) {
      auto& st = *state.at(a);
      std::vector<torch::Tensor> h = std::move(st.taps);
      st.taps.clear();
      h.push_back((st.post_norm ? base : x).detach());  // h_L
      const int64_t want = param(a, "lst_down.weight").size(0);
      PEFT_CHECK(static_cast<int64_t>(h.size()) == want, "LST adapter '", a, "': the forward passed ", h.size() - 1,
                 " block states before ", st.head_path, ", expected ", want - 1,
                 " (was the model called in pieces, or does a block skip its tapped module?)");
      y = y + side(a, h).to(y.scalar_type());
    }
    return y;
  }
};

class LstTuner : public Tuner {
 public:
  std::string peft_type() const override { return "LST"; }
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    return with_common(
        {
            ConfigField{"reduction_factor", T::Number, 8, "the side network's width = hidden / reduction_factor"}.above(0),
            ConfigField{"side_dim", T::Int, nullptr, "the side network's width; null: from reduction_factor"}.at_least(1).or_null(),
            ConfigField{"gate_temperature", T::Number, 0.1, "temperature T of the gates sigmoid(alpha / T) that mix backbone and side"}
                .above(0),
            ConfigField{"init_weights", T::Bool, true, "true: the side network starts from the backbone's pruned weights"},
            ConfigField{"peft_cpp_format_version", T::Int, 1, "the file layout's version (this build reads 1)"}.one_of({1}),
        },
        {"target_modules", "modules_to_save", "base_model_name_or_path", "task_type", "inference_mode"});
  }
  void validate(const nlohmann::json& c) const override {
    PEFT_CHECK(c["target_modules"].is_null(), "adapter config: field 'target_modules' must be null for LST "
               "(the side network reads the model's 'block.in' and 'norm.final', or 'block.out', roles)");
  }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    auto roles = pm.model->roles();
    auto st = std::make_shared<LstState>();
    // The slots a role selects (targeting resolves the role's suffix or regex), in module order,
    // which is forward order.
    auto paths_of = [&](const std::string& role) {
      std::vector<std::string> out;
      for (auto& ref : pm.select_slots(*this, {{"target_modules", nlohmann::json::array({role})}})) out.push_back(ref.path);
      return out;
    };
    std::vector<std::string> taps;
    if (roles.count(role::kBlockIn) && roles.count(role::kNormFinal)) {
      taps = paths_of(role::kBlockIn);
      auto fin = paths_of(role::kNormFinal);
      PEFT_CHECK(fin.size() == 1, "LST: role 'norm.final' (", roles[role::kNormFinal], ") of model type '",
                 pm.model->model_type(), "' selects ", fin.size(), " modules, expected one");
      st->head_path = fin[0];
    } else if (roles.count(role::kBlockOut)) {
      st->post_norm = true;
      taps = paths_of(role::kBlockOut);
      PEFT_CHECK(taps.size() >= 2, "LST: role 'block.out' (", roles[role::kBlockOut], ") of model type '",
                 pm.model->model_type(), "' selects ", taps.size(), " modules, expected the embeddings' and each block's");
      st->head_path = taps.back();
      taps.pop_back();
    } else {
      fail("LST: model type '", pm.model->model_type(), "' has neither the 'block.in' and 'norm.final' roles (a "
           "pre-norm stack: each block's input and the final norm) nor the 'block.out' role (a post-norm stack: "
           "the embeddings' and each block's output)");
    }
    st->num_layers = static_cast<int64_t>(taps.size());  // post-norm: h_L comes from the head
    PEFT_CHECK(st->num_layers >= 1, "LST: model type '", pm.model->model_type(), "': the '",
               st->post_norm ? role::kBlockOut : role::kBlockIn, "' role selects no block");
    pm.set_input_adapter(name, st);
    // Kept in the stored config as resolved full paths (a suffix equal to the whole path);
    // validate() wants null from users, so the saved file drops it again (saved_config).
    taps.push_back(st->head_path);
    pm.mutable_config(name)["target_modules"] = taps;
  }
  nlohmann::json saved_config(const nlohmann::json& cfg) const override {
    auto c = cfg;
    c["target_modules"] = nullptr;
    return c;
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    auto st = std::dynamic_pointer_cast<LstState>(pm.adapter(name).input);
    auto cur = slot.get();
    if (slot.path == st->head_path) {
      wrap<LstHead>(slot, [&](LstHead& head) {
        const int64_t d = pm.model->dims().hidden_size;
        const int64_t ds = c["side_dim"].is_null()
                               ? std::max<int64_t>(1, static_cast<int64_t>(d / c["reduction_factor"].get<double>()))
                               : c["side_dim"].get<int64_t>();
        auto dt = torch::kFloat32;
        for (auto& p : cur->parameters()) dt = trainable_dtype(p.scalar_type());
        head.add(name, st, st->num_layers, d, ds, c["gate_temperature"].get<double>(), c["init_weights"].get<bool>(), dt);
      });
    } else {
      wrap<LstTap>(slot, [&](LstTap& tap) {
        tap.add(name, st);
      });
    }
  }
};

PEFT_REGISTER_TUNER(LstTuner);
PEFT_REGISTER_METHOD("lst", {{"peft_type", "LST"}});

}  // namespace
}  // namespace peft
