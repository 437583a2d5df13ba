// Bottleneck adapters: small down-project / non-linearity / up-project modules inserted into
// every block (our peft_type "BOTTLENECK"; Python peft has no such method).
//
// - Houlsby et al. 2019 ("Parameter-Efficient Transfer Learning for NLP", sec. 2.1, fig. 2):
//   sequential adapters after the attention output projection and after the FFN, each
//   h <- h + W_up f(W_down h), before the block's residual add / layer norm.
// - Pfeiffer et al. 2021 ("AdapterFusion", sec. 3.1): one sequential adapter after the FFN.
// - Parallel adapter (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
//   Learning", eq. 8 / table 1, "scaled PA"): h <- FFN(x) + s * W_up f(W_down x), reading the
//   FFN input x, with scaling s (4 in the paper).
// - Optional own LayerNorm on the adapter input (the adapter-transformers "residual adapter"
//   variant: h + W_up f(W_down LN(h))), configurable bottleneck (hidden_size / reduction_factor
//   or bottleneck_size), non-linearity, and AdapterDrop (Rücklé et al. 2021, sec. 3: no adapters
//   in the lowest n layers, adapter_drop_layers). adapter_drop_prob is the training-time
//   variant: while training, each adapter is skipped in a forward with probability p, so the
//   model learns to work without any subset of them (the paper's "robust AdapterDrop" samples
//   the number of dropped lowest layers per step instead; independent drops also cover the
//   upper layers); eval and inference always run every adapter.
// - Gated adapter (adapter_gate; UniPELT, Mao et al. 2022, sec. 3.2): h + G_A · adapter(h) with
//   the per-token gate G_A = sigmoid(W_g h + b_g) read from the adapter's input.
// - Invertible adapter (inv_adapter "nice"; MAD-X, Pfeiffer et al. 2020, sec. 2.3): the language
//   adapter's coupling block on the token embeddings, undone before the head (tuners/invertible.h).
// W_up (and its bias) start at zero, so the adapted model equals the base at init; W_down is
// initialised as nn.Linear (Kaiming-uniform). Non-linear, so not mergeable.
//
// Placement uses the model's generic roles: "attn.o" (attention output), "mlp.down" (FFN
// output) and "mlp" (the whole FFN, parallel adapters); an explicit target_modules overrides.
// A sequential adapter at a slot maps its output (dim out -> b -> out); a parallel one maps
// the slot's input to its output (in -> b -> out).
//
// Format (peft_cpp_format_version 1): adapter_config.json with peft_type "BOTTLENECK" and the
// fields of defaults() below (target_modules resolved to module-name suffixes), and
// adapter_model.safetensors with, per wrapped module <m> (model-relative path, e.g.
// model.layers.0.mlp.down_proj; K = base_model.model.<m>), d = in (parallel) or out (sequential):
//   K.adapter_down.weight [b, d]    K.adapter_down.bias [b]
//   K.adapter_up.weight   [out, b]  K.adapter_up.bias   [out]
//   K.adapter_ln.weight / K.adapter_ln.bias [d] (adapter_layernorm only)
//   K.adapter_gate.weight [1, d] / K.adapter_gate.bias [1] (adapter_gate only)
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"
#include "tuners/bottleneck.h"
#include "tuners/invertible.h"

namespace peft {
namespace {

class BottleneckLayer : public TunerLayer {
 public:
  using TunerLayer::TunerLayer;
  struct Opts {
    bool parallel, layernorm, gate;
    double scaling, dropout;
    std::string act;
    double drop_prob;  // AdapterDrop while training
  };
  std::map<std::string, Opts> opts;
  std::map<std::string, AdapterBlock> blocks;  // composition adapters (Average, Fuse) at this slot
  std::string method() const override { return "bottleneck"; }
  bool supports_row_adapters(const std::string& a) const override { return !blocks.count(a); }
  void remove_adapter(const std::string& a) override {
    TunerLayer::remove_adapter(a);
    opts.erase(a);
    blocks.erase(a);
  }

  void add_block(const std::string& name, const AdapterBlock& b, const std::string& path) {
    int64_t d = -1;
    for (auto& c : b.children) {
      PEFT_CHECK(opts.count(c), "adapter composition '", name, "': module ", path, " holds no bottleneck adapter '", c, "'");
      const int64_t out = param(c, "adapter_up.weight").size(0);
      PEFT_CHECK(d < 0 || d == out, "adapter composition '", name, "': adapters of different widths at ", path);
      d = out;
    }
    blocks[name] = b;
    adapters_.insert(name);
    if (b.kind != "fuse") return;
    auto dt = param(b.children[0], "adapter_up.weight").scalar_type();
    // Pfeiffer et al. 2021 sec. 3.2: V starts as the identity (the fusion begins as a soft
    // average of the adapters' outputs); Q and K small.
    auto small = [&] { return (torch::randn({d, d}) * 0.02).to(dt); };
    add_param(name, "fusion_query.weight", b.init_weights ? small() : kaiming_uniform({d, d}, d).to(dt));
    add_param(name, "fusion_query.bias", torch::zeros({d}, dt));
    add_param(name, "fusion_key.weight", b.init_weights ? small() : kaiming_uniform({d, d}, d).to(dt));
    add_param(name, "fusion_key.bias", torch::zeros({d}, dt));
    add_param(name, "fusion_value.weight", b.init_weights ? torch::eye(d, dt) : kaiming_uniform({d, d}, d).to(dt));
    add_param(name, "fusion_value.bias", b.init_weights ? torch::zeros({d}, dt) : kaiming_uniform({d}, d).to(dt));
  }

  // A block over its children, each on the same input: x for parallel adapters, h (the base
  // output) for sequential ones.
  //   Average (AdapterHub's output averaging): h + sum_i w_i z_i.
  //   Fuse (AdapterFusion, Pfeiffer et al. 2021, sec. 3.2): y_i = h + z_i, per token
  //   s = softmax_i((Q h)^T (K y_i) / T), output sum_i s_i (V y_i); Q, K, V are d x d Linears.
  torch::Tensor combine(const std::string& name, const torch::Tensor& x, const torch::Tensor& h) {
    const auto& b = blocks.at(name);
    std::vector<torch::Tensor> z;
    for (auto& c : b.children) {
      PEFT_CHECK(opts.count(c), "adapter composition '", name, "': adapter '", c, "' is no longer loaded");
      z.push_back(adapter(c, opts.at(c).parallel ? x : h).to(h.scalar_type()));
    }
    if (b.kind == "average") {
      auto out = h;
      for (size_t i = 0; i < z.size(); ++i) out = out + z[i] * b.weights[i];
      return out;
    }
    namespace F = torch::nn::functional;
    std::vector<torch::Tensor> ys;
    for (auto& zi : z) ys.push_back(h + zi);
    auto y = torch::stack(ys, -2);  // [..., N, d]
    auto q = F::linear(h, param(name, "fusion_query.weight"), param(name, "fusion_query.bias")).unsqueeze(-2);
    auto k = F::linear(y, param(name, "fusion_key.weight"), param(name, "fusion_key.bias"));
    auto v = F::linear(y, param(name, "fusion_value.weight"), param(name, "fusion_value.bias"));
    auto s = torch::softmax((q * k).sum(-1) / b.temperature, -1);  // [..., N]
    return (s.unsqueeze(-1) * v).sum(-2);
  }

  void add(const std::string& a, int64_t in, int64_t out, int64_t b, const Opts& o, bool init_weights) {
    opts[a] = o;
    int64_t din = o.parallel ? in : out;
    auto dt = torch::kFloat32;
    for (auto& p : base_layer->parameters()) {
      dt = trainable_dtype(p.scalar_type());
      break;
    }
    add_param(a, "adapter_down.weight", kaiming_uniform({b, din}, din).to(dt));
    add_param(a, "adapter_down.bias", kaiming_uniform({b}, din).to(dt));
    auto up_w = init_weights ? torch::zeros({out, b}) : kaiming_uniform({out, b}, b);
    add_param(a, "adapter_up.weight", up_w.to(dt));
    add_param(a, "adapter_up.bias", torch::zeros({out}, dt));
    if (o.gate) {
      add_param(a, "adapter_gate.weight", kaiming_uniform({1, din}, din).to(dt));
      add_param(a, "adapter_gate.bias", kaiming_uniform({1}, din).to(dt));
    }
    if (o.layernorm) {
      add_param(a, "adapter_ln.weight", torch::ones({din}, dt));
      add_param(a, "adapter_ln.bias", torch::zeros({din}, dt));
    }
  }
  torch::Tensor adapter(const std::string& a, const torch::Tensor& x) {
    auto& o = opts.at(a);
    auto z = x;
    if (o.layernorm)
      z = torch::layer_norm(z, {z.size(-1)}, param(a, "adapter_ln.weight"), param(a, "adapter_ln.bias"), 1e-5);
    if (o.dropout > 0) z = torch::dropout(z, o.dropout, is_training());
    z = torch::nn::functional::linear(z, param(a, "adapter_down.weight"), param(a, "adapter_down.bias"));
    z = activation(o.act, z);
    z = torch::nn::functional::linear(z, param(a, "adapter_up.weight"), param(a, "adapter_up.bias"));
    if (o.gate) z = z * torch::sigmoid(torch::nn::functional::linear(x, param(a, "adapter_gate.weight"), param(a, "adapter_gate.bias")));
    return z * (o.scaling * scale_of(a));
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto h = base_forward(x);
    if (row_groups) {  // mixed-adapter batch: each row through its own adapter only
      for (auto& g : row_groups->rows) {
        if (!opts.count(g.first) || !adapters_.count(g.first)) continue;
        auto& o = opts.at(g.first);
        if (o.drop_prob > 0 && is_training() && torch::rand({1}).item<double>() < o.drop_prob) continue;
        auto idx = rows_of(g.first, x);
        h = h.index_add(0, idx, adapter(g.first, (o.parallel ? x : h).index_select(0, idx)).to(h.scalar_type()));
      }
      return h;
    }
    // Parallel adapters read the slot input; sequential ones the (running) output, in order: with
    // several active adapters this is AdapterHub's Stack (a language adapter under a task one).
    // An active block (Average, Fuse) runs at its place in that order; its children act only
    // through it.
    auto live = live_adapters();
    std::set<std::string> in_block;
    for (auto& a : live)
      if (blocks.count(a)) in_block.insert(blocks.at(a).children.begin(), blocks.at(a).children.end());
    for (auto& a : live) {
      if (in_block.count(a)) continue;
      if (blocks.count(a)) {
        h = combine(a, x, h);
        continue;
      }
      auto& o = opts.at(a);
      if (o.drop_prob > 0 && is_training() && torch::rand({1}).item<double>() < o.drop_prob) continue;
      h = h + adapter(a, o.parallel ? x : h);
    }
    return h;
  }
};

class BottleneckTuner : public Tuner {
 public:
  std::string peft_type() const override { return "BOTTLENECK"; }
  // Ours (AdapterHub's bottleneck adapters; peft has none): every field is written to
  // adapter_config.json.
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    return with_common(
        {
            ConfigField{"adapter_type", T::String, "houlsby",
                        "houlsby: after attention and FFN; pfeiffer: after the FFN; parallel: beside the FFN"}
                .one_of({"houlsby", "pfeiffer", "parallel"}),
            ConfigField{"reduction_factor", T::Number, 16, "bottleneck width = hidden / reduction_factor (> 0)"},
            ConfigField{"bottleneck_size", T::Int, nullptr, "the bottleneck width; null: from reduction_factor"}.at_least(1).or_null(),
            ConfigField{"non_linearity", T::String, "relu", "the activation between down and up projections"},
            ConfigField{"scaling", T::Number, 1.0, "output scale s (the parallel adapter's 4)"},
            ConfigField{"dropout", T::Number, 0.0, "dropout on the adapter's output"}.in_range(0, 1),
            ConfigField{"adapter_layernorm", T::Bool, false, "a LayerNorm before the down projection"},
            ConfigField{"adapter_gate", T::Bool, false, "a learned per-token gate on the adapter (UniPELT)"},
            ConfigField{"adapter_drop_layers", T::Int, 0, "AdapterDrop: no adapter in the first n layers"}.at_least(0),
            ConfigField{"adapter_drop_prob", T::Number, 0.0, "AdapterDrop: drop each adapter with this probability in training"}
                .in_range(0, 1),
            ConfigField{"init_weights", T::Bool, true, "true: the up projection starts at zero (the base model)"},
            ConfigField{"inv_adapter", T::String, nullptr,
                        "MAD-X's invertible adapter on the embeddings (NICE coupling), undone before the head; null: none"}
                .one_of({nullptr, "nice"})
                .or_null(),
            ConfigField{"inv_adapter_reduction_factor", T::Number, 2, "the coupling networks' width = hidden / 2 / this"}.above(0),
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
    resolve_adapter_placement(pm, name, "BOTTLENECK");
    add_invertible_adapter(pm, *this, name, c);  // when inv_adapter is set (tuners/invertible.h)
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    auto cur = slot.get();
    wrap<BottleneckLayer>(slot, [&](BottleneckLayer& layer) {
      const int64_t hidden = pm.model->dims().hidden_size;
      BottleneckLayer::Opts o{c["adapter_type"] == "parallel", c["adapter_layernorm"].get<bool>(), c["adapter_gate"].get<bool>(),
                              c["scaling"].get<double>(), c["dropout"].get<double>(), c["non_linearity"].get<std::string>(),
                              c["adapter_drop_prob"].get<double>()};
      int64_t b = adapter_bottleneck_size(c, hidden);
      layer.add(name, layer_input_dim(cur.get(), hidden), layer_output_dim(cur.get(), hidden), b, o, c["init_weights"].get<bool>());
    });
  }
};

PEFT_REGISTER_TUNER(BottleneckTuner);
PEFT_REGISTER_METHOD("bottleneck", {{"peft_type", "BOTTLENECK"}});
PEFT_REGISTER_METHOD("houlsby", {{"peft_type", "BOTTLENECK"}, {"adapter_type", "houlsby"}});
// MAD-X's language adapter (Pfeiffer et al. 2020; AdapterHub's "pfeiffer+inv"): after the FFN,
// with an invertible adapter on the embeddings.
PEFT_REGISTER_METHOD("pfeiffer-inv", {{"peft_type", "BOTTLENECK"}, {"adapter_type", "pfeiffer"}, {"inv_adapter", "nice"}});
PEFT_REGISTER_METHOD("pfeiffer", {{"peft_type", "BOTTLENECK"}, {"adapter_type", "pfeiffer"}});
PEFT_REGISTER_METHOD("parallel-adapter", {{"peft_type", "BOTTLENECK"}, {"adapter_type", "parallel"}, {"scaling", 4.0}});

}  // namespace

void add_adapter_block(Layer* layer, const std::string& name, const AdapterBlock& block, const std::string& path) {
  BottleneckLayer* bl = nullptr;
  for (Layer* l = layer; l && !bl;) {
    bl = dynamic_cast<BottleneckLayer*>(l);
    auto* t = dynamic_cast<TunerLayer*>(l);
    l = t ? t->base_layer.get() : nullptr;
  }
  PEFT_CHECK(bl, "adapter composition '", name, "': module ", path, " has no bottleneck adapter to compose");
  bl->add_block(name, block, path);
}

int64_t layer_input_dim(Layer* l, int64_t hidden) {
  auto* lin = innermost_linear(l);
  return lin ? lin->in_features : hidden;
}
int64_t layer_output_dim(Layer* l, int64_t hidden) {
  auto* lin = innermost_linear(l);
  return lin ? lin->out_features : hidden;
}
int64_t adapter_bottleneck_size(const nlohmann::json& c, int64_t hidden) {
  return c["bottleneck_size"].is_null()
             ? std::max<int64_t>(1, static_cast<int64_t>(hidden / c["reduction_factor"].get<double>()))
             : c["bottleneck_size"].get<int64_t>();
}
void validate_adapter_placement(const nlohmann::json& c) {
  auto t = c["adapter_type"];
  PEFT_CHECK(t == "houlsby" || t == "pfeiffer" || t == "parallel",
             "adapter config: field 'adapter_type' must be houlsby, pfeiffer or parallel, got ", t.dump());
  PEFT_CHECK(c["reduction_factor"].is_number() && c["reduction_factor"].get<double>() > 0,
             "adapter config: field 'reduction_factor' must be > 0");
  PEFT_CHECK(c["bottleneck_size"].is_null() || (c["bottleneck_size"].is_number_integer() && c["bottleneck_size"].get<int64_t>() > 0),
             "adapter config: field 'bottleneck_size' must be a positive integer or null");
  PEFT_CHECK(c["adapter_drop_layers"].is_number_integer() && c["adapter_drop_layers"].get<int64_t>() >= 0,
             "adapter config: field 'adapter_drop_layers' must be a non-negative integer");
}

void exclude_shadowed_attention_output(PeftModel& pm, nlohmann::json& c) {
  if (!c["target_modules"].is_null() || !c["exclude_modules"].is_null()) return;
  auto roles = pm.model->roles();
  if (!roles.count(role::kAttnO) || !roles.count(role::kMlpDown)) return;
  const auto &o = roles[role::kAttnO], &down = roles[role::kMlpDown];
  if (o != down && o.size() > down.size() && o.compare(o.size() - down.size(), down.size(), down) == 0 &&
      o[o.size() - down.size() - 1] == '.')
    c["exclude_modules"] = {o};
}

// Resolves placements (roles -> module suffixes) and AdapterDrop into the stored config.
void resolve_adapter_placement(PeftModel& pm, const std::string& name, const std::string& method) {
  auto& c = pm.mutable_config(name);
  auto roles = pm.model->roles();
  auto module_of = [&](const std::string& r) {
    PEFT_CHECK(roles.count(r), method, " (", c["adapter_type"].get<std::string>(), "): model type '",
               pm.model->model_type(), "' has no '", r, "' module; give target_modules explicitly");
    return roles[r];
  };
  if (c["target_modules"].is_null()) {
    auto type = c["adapter_type"].get<std::string>();
    if (type == "parallel") {
      c["target_modules"] = {module_of(role::kMlp)};
    } else {
      auto down = module_of(role::kMlpDown);
      if (type == "houlsby") {
        c["target_modules"] = {module_of(role::kAttnO), down};
      } else {
        exclude_shadowed_attention_output(pm, c);  // before target_modules is set
        c["target_modules"] = {down};
      }
    }
  }
  int64_t drop = c["adapter_drop_layers"].get<int64_t>();
  if (drop > 0 && c["layers_to_transform"].is_null()) {
    int64_t L = pm.model->dims().num_layers;
    PEFT_CHECK(drop < L, "adapter config: adapter_drop_layers (", drop, ") leaves no layer of ", L);
    c["layers_to_transform"] = nlohmann::json::array();
    for (int64_t i = drop; i < L; ++i) c["layers_to_transform"].push_back(i);
  }
}

}  // namespace peft
