// The Llama family as transformers' LlamaForCausalLM / LlamaForSequenceClassification define
// it, and Mistral / Qwen2 (transformers 4.37.2, eager attention): RMSNorm, rotary position
// embeddings (Su et al. 2021, RoFormer, eq. 34 in the rotate-half form), SwiGLU MLP
// (Shazeer 2020): down(silu(gate(x)) * up(x)), GQA.
//
// Per family (as their transformers modeling files hard-code it): Llama's q/k/v/o projections
// have a bias when `attention_bias` is true; Qwen2's q/k/v always have one and o_proj never;
// Mistral's none. Sliding-window attention (Mistral, Qwen2; Beltagy et al. 2020 / Jiang et al.
// 2023): the query at absolute position p attends the keys j with p - W < j <= p
// (W = `sliding_window`; transformers 4.37.2 `_make_causal_mask`, diagonal past - W + 1), with or
// without a KV cache. As 4.37.2's eager path, the window comes from `sliding_window` alone and
// applies to every layer: Qwen2's `use_sliding_window` and `max_window_layers` only steer its
// flash-attention path, so they change nothing here (docs/CONFIG_AUDIT_MODELS.md).
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "models/checkpoint.h"
#include "models/config_fields.h"
#include "models/decoder_common.h"
#include "models/fused_ops.h"
#include "peft/error.h"
#include "peft/model.h"
#include "peft/precision.h"

namespace peft {
namespace {

struct LlamaConfig {
  int64_t hidden, intermediate, n_layers, n_heads, n_kv, head_dim, vocab, max_pos, num_labels;
  double eps, theta;
  bool tie, qkv_bias, o_bias, mlp_bias;
  int64_t sliding_window = 0;  // 0: none
  std::string act;
  torch::Tensor inv_freq;  // [head_dim / 2]

  explicit LlamaConfig(const nlohmann::json& c) {
    hidden = cfg_int(c, "hidden_size");
    intermediate = cfg_int(c, "intermediate_size");
    n_layers = cfg_int(c, "num_hidden_layers");
    n_heads = cfg_int(c, "num_attention_heads");
    n_kv = cfg_int(c, "num_key_value_heads", n_heads);
    vocab = cfg_int(c, "vocab_size");
    PEFT_CHECK(hidden > 0 && intermediate > 0 && n_layers > 0 && n_heads > 0 && n_kv > 0 && vocab > 0,
               "config.json: sizes must be positive");
    PEFT_CHECK(n_heads % n_kv == 0, "config.json: num_attention_heads (", n_heads,
               ") must be a multiple of num_key_value_heads (", n_kv, ")");
    PEFT_CHECK(hidden <= (1 << 17) && intermediate <= (1 << 20) && n_layers <= (1 << 12) && vocab <= (1 << 24) &&
                   n_heads <= (1 << 14),
               "config.json: implausible sizes (hidden_size ", hidden, ", intermediate_size ", intermediate,
               ", num_hidden_layers ", n_layers, ", vocab_size ", vocab, "): corrupt config?");
    head_dim = cfg_int(c, "head_dim", hidden / n_heads);
    PEFT_CHECK(head_dim > 0 && head_dim <= (1 << 14), "config.json: head_dim must be in [1, 16384], got ", head_dim);
    PEFT_CHECK(head_dim % 2 == 0, "config.json: head_dim must be even for rotary embeddings, got ", head_dim);
    max_pos = cfg_int(c, "max_position_embeddings", 2048);
    eps = cfg_double(c, "rms_norm_eps", 1e-6);
    theta = cfg_double(c, "rope_theta", 10000.0);
    tie = cfg_bool(c, "tie_word_embeddings", false);
    const std::string type = cfg_str(c, "model_type", "llama");
    if (type == "qwen2") {  // Qwen2Attention: bias on q/k/v, none on o_proj (no config field)
      qkv_bias = true;
      o_bias = false;
    } else if (type == "mistral") {  // MistralAttention: no bias (no config field)
      qkv_bias = o_bias = false;
    } else {  // LlamaAttention: attention_bias on all four
      qkv_bias = o_bias = cfg_bool(c, "attention_bias", false);
    }
    mlp_bias = cfg_bool(c, "mlp_bias", false);
    if (type == "mistral" || type == "qwen2") {
      sliding_window = cfg_int(c, "sliding_window", 0);
      PEFT_CHECK(!c.contains("sliding_window") || c["sliding_window"].is_null() || sliding_window > 0,
                 "config.json: field 'sliding_window' must be a positive integer or null, got ", c["sliding_window"].dump());
    }
    act = cfg_str(c, "hidden_act", "silu");
    check_activation_field("hidden_act", act);
    num_labels = c.contains("id2label") && c["id2label"].is_object() ? (int64_t)c["id2label"].size()
                                                                     : cfg_int(c, "num_labels", 2);
    refuse_common_fields(c);
    refuse_unsupported_problem_type(c, num_labels);
    if (type == "mistral" || type == "qwen2") {
      // Not fields of transformers 4.37's MistralConfig / Qwen2Config (its modeling code ignores
      // them) but later versions read them: a file that sets them is ambiguous.
      refuse_field(c, "rope_scaling", [](const nlohmann::json&) { return true; },
                   "transformers 4.37's " + type + " has no RoPE scaling (later versions apply it); not supported");
      refuse_unless(c, "mlp_bias", false, "the " + type + " MLP has no bias");
      if (type == "mistral") refuse_unless(c, "attention_bias", false, "MistralAttention has no bias");
      if (type == "qwen2") refuse_unless(c, "attention_bias", true, "Qwen2Attention has a q/k/v bias (and none on o_proj)");
    }
    // transformers: inv_freq = 1 / theta^(arange(0, d, 2) / d), in float32.
    inv_freq = 1.0 / torch::pow(theta, torch::arange(0, head_dim, 2, torch::kLong).to(torch::kFloat32) / head_dim);
    if (c.contains("rope_scaling") && !c["rope_scaling"].is_null()) apply_rope_scaling(c["rope_scaling"]);
  }

  void apply_rope_scaling(const nlohmann::json& rs) {
    PEFT_CHECK(rs.is_object(), "config.json: rope_scaling must be an object or null");
    std::string type = cfg_str(rs, "rope_type", cfg_str(rs, "type", ""));
    double factor = cfg_double(rs, "factor", 1.0);
    if (type == "default") return;
    if (type == "linear") {  // position interpolation (Chen et al. 2023): positions / factor
      inv_freq = inv_freq / factor;
    } else if (type == "llama3") {
      // Llama 3.1 frequency-dependent scaling (transformers' _compute_llama3_parameters).
      double low = cfg_double(rs, "low_freq_factor", 1.0), high = cfg_double(rs, "high_freq_factor", 4.0);
      double old_ctx = cfg_double(rs, "original_max_position_embeddings", 8192);
      double low_wl = old_ctx / low, high_wl = old_ctx / high;
      auto wavelen = 2 * M_PI / inv_freq;
      auto scaled = torch::where(wavelen > low_wl, inv_freq / factor, inv_freq);
      auto smooth = (old_ctx / wavelen - low) / (high - low);
      auto smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
      auto medium = (wavelen >= high_wl) & (wavelen <= low_wl);
      inv_freq = torch::where(medium, smoothed, scaled);
    } else {
      fail("config.json: field 'rope_scaling' = ", rs.dump(), ": type '", type,
           "' is not supported (supported: linear, llama3)");
    }
  }
};

// Masks (to the dtype's lowest value, as transformers' masked_fill) the keys j <= p - W of the
// query at absolute position p; bias [B, 1, T, K], queries at K - T .. K - 1.
torch::Tensor apply_sliding_window(const torch::Tensor& bias, int64_t W) {
  const int64_t T = bias.size(2), K = bias.size(3);
  if (W <= 0 || K <= W) return bias;  // no query sees more than W keys anyway
  auto lopts = torch::TensorOptions().dtype(torch::kLong).device(bias.device());
  auto p = torch::arange(K - T, K, lopts).view({T, 1});
  auto j = torch::arange(K, lopts).view({1, K});
  auto outside = (j <= p - W).view({1, 1, T, K});
  // The same masked value as attention_bias().
  auto neg = bias.scalar_type() == torch::kFloat64
                 ? torch::full({}, std::numeric_limits<double>::lowest(), lopts.dtype(torch::kFloat64))
                 : torch::full({}, std::numeric_limits<float>::lowest(), lopts.dtype(torch::kFloat32)).to(bias.scalar_type());
  return bias.masked_fill(outside, neg);
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  auto h = x.size(-1) / 2;
  return torch::cat({-x.slice(-1, h), x.slice(-1, 0, h)}, -1);
}

class LlamaAttention : public Module {
 public:
  LayerPtr q_proj, k_proj, v_proj, o_proj;
  const LlamaConfig& c;
  explicit LlamaAttention(const LlamaConfig& cfg) : c(cfg) {
    register_slot("q_proj", q_proj, std::make_shared<Linear>(c.hidden, c.n_heads * c.head_dim, c.qkv_bias));
    register_slot("k_proj", k_proj, std::make_shared<Linear>(c.hidden, c.n_kv * c.head_dim, c.qkv_bias));
    register_slot("v_proj", v_proj, std::make_shared<Linear>(c.hidden, c.n_kv * c.head_dim, c.qkv_bias));
    register_slot("o_proj", o_proj, std::make_shared<Linear>(c.n_heads * c.head_dim, c.hidden, c.o_bias));
  }

  // x [B, T, H]; cos/sin [B, T, hd]; bias [B, 1, T, past + T]; k_cache/v_cache extended in place.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& bias, torch::Tensor* k_cache, torch::Tensor* v_cache,
                        const LayerPrefixGate& gate) {
    const int64_t B = x.size(0), T = x.size(1);
    auto g = gate.of ? gate.of(x) : torch::Tensor();  // UniPELT's prefix gate [B, 1, T, 1]
    auto q = q_proj->forward(x).view({B, T, c.n_heads, c.head_dim}).transpose(1, 2);
    auto k = k_proj->forward(x).view({B, T, c.n_kv, c.head_dim}).transpose(1, 2);
    auto v = v_proj->forward(x).view({B, T, c.n_kv, c.head_dim}).transpose(1, 2);
    auto cu = cos.unsqueeze(1), su = sin.unsqueeze(1);
    q = q * cu + rotate_half(q) * su;
    k = k * cu + rotate_half(k) * su;
    if (k_cache) {
      if (k_cache->defined()) {
        k = torch::cat({k_cache->to(k.scalar_type()), k}, 2);
        v = torch::cat({v_cache->to(v.scalar_type()), v}, 2);
      }
      *k_cache = k;
      *v_cache = v;
    }
    const int64_t rep = c.n_heads / c.n_kv;
    if (rep > 1) {  // GQA (Ainslie et al. 2023): query head h reads kv head h / rep
      auto L = k.size(2);
      k = k.unsqueeze(2).expand({B, c.n_kv, rep, L, c.head_dim}).reshape({B, c.n_heads, L, c.head_dim});
      v = v.unsqueeze(2).expand({B, c.n_kv, rep, L, c.head_dim}).reshape({B, c.n_heads, L, c.head_dim});
    }
    auto scores = torch::matmul(q, k.transpose(2, 3)) / std::sqrt(static_cast<double>(c.head_dim));
    if (g.defined()) scores = gate_prefix_columns(scores, g, gate.P);
    scores = scores + bias;
    auto probs = torch::softmax(scores.to(compute_dtype(scores.scalar_type())), -1).to(q.scalar_type());
    if (g.defined()) probs = gate_prefix_columns(probs, g, gate.P);
    auto out = torch::matmul(probs, v).transpose(1, 2).reshape({B, T, c.n_heads * c.head_dim});
    return o_proj->forward(out);
  }
};

class LlamaMLP : public Layer {
 public:
  LayerPtr gate_proj, up_proj, down_proj, act_fn;
  const LlamaConfig& c;
  explicit LlamaMLP(const LlamaConfig& cfg) : c(cfg) {
    register_slot("gate_proj", gate_proj, std::make_shared<Linear>(c.hidden, c.intermediate, c.mlp_bias));
    register_slot("up_proj", up_proj, std::make_shared<Linear>(c.hidden, c.intermediate, c.mlp_bias));
    register_slot("down_proj", down_proj, std::make_shared<Linear>(c.intermediate, c.hidden, c.mlp_bias));
    register_slot("act_fn", act_fn, std::make_shared<Activation>(c.act));
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto g = gate_proj->forward(x), u = up_proj->forward(x);
    // A half-precision SwiGLU saves gate and up only (models/fused_ops.h); same values.
    const auto* act = dynamic_cast<const Activation*>(act_fn.get());
    if (act && (act->name == "silu" || act->name == "swish") && is_half_dtype(g.scalar_type()))
      return down_proj->forward(silu_mul(g, u));
    return down_proj->forward(act_fn->forward(g) * u);
  }
  LayerPtr clone_layer() const override { return clone_slots_into(*this, std::make_shared<LlamaMLP>(c)); }
};

class LlamaDecoderLayer : public Module {
 public:
  std::shared_ptr<LlamaAttention> self_attn;
  LayerPtr mlp, input_layernorm, post_attention_layernorm;
  explicit LlamaDecoderLayer(const LlamaConfig& c) {
    self_attn = register_module("self_attn", std::make_shared<LlamaAttention>(c));
    register_slot("mlp", mlp, std::make_shared<LlamaMLP>(c));
    register_slot("input_layernorm", input_layernorm, std::make_shared<RMSNorm>(c.hidden, c.eps));
    register_slot("post_attention_layernorm", post_attention_layernorm, std::make_shared<RMSNorm>(c.hidden, c.eps));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& bias, torch::Tensor* kc, torch::Tensor* vc, const LayerPrefixGate& gate) {
    auto h = x + self_attn->forward(input_layernorm->forward(x), cos, sin, bias, kc, vc, gate);
    return h + mlp->forward(post_attention_layernorm->forward(h));
  }
};

class LlamaModel : public Module {
 public:
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers;
  LayerPtr norm;
  std::vector<std::shared_ptr<LlamaDecoderLayer>> blocks;
  const LlamaConfig& c;
  bool checkpoint = false;  // gradient checkpointing per decoder layer (set by the owner)
  explicit LlamaModel(const LlamaConfig& cfg) : c(cfg) {
    embed_tokens = register_module("embed_tokens", torch::nn::Embedding(c.vocab, c.hidden));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.n_layers; ++i) {
      blocks.push_back(std::make_shared<LlamaDecoderLayer>(c));
      layers->push_back(blocks.back());
    }
    register_slot("norm", norm, std::make_shared<RMSNorm>(c.hidden, c.eps));
  }

  // Returns the final hidden state (after norm); fills `hs` in transformers' convention.
  torch::Tensor forward(const ModelInput& in, std::vector<torch::Tensor>* hs) {
    torch::Tensor x = to_activation(in.inputs_embeds.defined() ? in.inputs_embeds : embed_tokens->forward(in.input_ids), /*family_keeps_half=*/true);
    const int64_t B = x.size(0), T = x.size(1);
    KVCache* cache = in.cache;
    if (cache && cache->k.size() != (size_t)c.n_layers) {
      cache->k.resize(c.n_layers);
      cache->v.resize(c.n_layers);
    }
    const int64_t past = cache ? cache->length() : 0;
    auto dev = x.device();
    torch::Tensor pos = in.position_ids.defined()
                            ? in.position_ids.to(dev)
                            : torch::arange(past, past + T, torch::TensorOptions().dtype(torch::kLong).device(dev))
                                  .unsqueeze(0)
                                  .expand({B, T});
    auto freqs = pos.to(torch::kFloat32).unsqueeze(-1) * c.inv_freq.to(dev).view({1, 1, -1});
    auto emb = torch::cat({freqs, freqs}, -1);
    auto cos = emb.cos().to(x.scalar_type()), sin = emb.sin().to(x.scalar_type());
    auto bias = attention_bias(in.attention_mask, B, T, past + T, /*causal=*/true, x.scalar_type(), dev);
    bias = apply_sliding_window(bias, c.sliding_window);
    auto gates = kv_prefix_gates(in.prefix_gate.get(), c.n_layers, bias, cache);
    refuse_checkpointed_prefix_gate(checkpoint, *this, static_cast<bool>(in.prefix_gate));
    for (int64_t i = 0; i < c.n_layers; ++i) {
      if (hs) hs->push_back(x);
      torch::Tensor *kc = cache ? &cache->k[i] : nullptr, *vc = cache ? &cache->v[i] : nullptr;
      auto block = blocks[i];
      LayerPrefixGate gate = gates[i];
      // The layer's tensors go through the block's inputs (docs/MEMORY.md).
      x = run_cached_block(
          checkpoint, *block,
          [block, gate](const std::vector<torch::Tensor>& t, const std::vector<torch::Tensor*>& kv) {
            return block->forward(t[0], t[1], t[2], t[3], kv[0], kv[1], gate);
          },
          {x, cos, sin, bias}, {kc, vc});
    }
    x = norm->forward(x);
    if (hs) hs->push_back(x);
    return x;
  }
};

class LlamaForCausalLM : public PretrainedModel {
 public:
  LlamaConfig c;
  std::shared_ptr<LlamaModel> model;
  LayerPtr lm_head;  // unset when tied: the embedding matrix is the head
  TaskType task_;
  LayerPtr score;

  LlamaForCausalLM(const nlohmann::json& cfg, TaskType task) : c(cfg), task_(task) {
    model = register_module("model", std::make_shared<LlamaModel>(c));
    if (task_ == TaskType::SeqCls) {
      register_slot("score", score, std::make_shared<Linear>(c.hidden, c.num_labels, false));
    } else if (!c.tie) {
      register_slot("lm_head", lm_head, std::make_shared<Linear>(c.hidden, c.vocab, false));
    }
  }

  ModelOutput forward(const ModelInput& in) override {
    ModelOutput out;
    const MemoryOptions mem = memory_options(*this);
    model->checkpoint = mem.gradient_checkpointing;
    auto h = model->forward(in, in.output_hidden_states ? &out.hidden_states : nullptr);
    decoder_head_output(out, h, in, task_, score, lm_head, model->embed_tokens->weight,
                        checkpoint_active(mem.loss_chunk_tokens > 0, *this) ? mem.loss_chunk_tokens : 0);
    return out;
  }
  torch::Tensor embed_tokens(const torch::Tensor& ids) override { return to_activation(model->embed_tokens->forward(ids), true); }
  ModelDims dims() const override {
    ModelDims d;
    d.hidden_size = c.hidden;
    d.num_layers = c.n_layers;
    d.num_heads = c.n_heads;
    d.num_kv_heads = c.n_kv;
    d.head_dim = c.head_dim;
    d.vocab_size = c.vocab;
    return d;
  }
  TaskType task() const override { return task_; }
  std::string model_type() const override { return cfg_str(config, "model_type", "llama"); }
  std::string layers_pattern() const override { return "layers"; }
  std::map<std::string, std::string> roles() const override {
    return {{role::kAttnQ, "q_proj"},     {role::kAttnK, "k_proj"},       {role::kAttnV, "v_proj"},
            {role::kAttnO, "o_proj"},     {role::kMlpGate, "gate_proj"},  {role::kMlpUp, "up_proj"},
            {role::kMlpDown, "down_proj"}, {role::kMlp, "mlp"},            {role::kMlpAct, "act_fn"},
            {role::kNormAttn, "input_layernorm"}, {role::kNormMlp, "post_attention_layernorm"},
            {role::kBlockIn, "input_layernorm"}, {role::kNormFinal, "norm"},
            {role::kHead, task_ == TaskType::SeqCls ? "score" : "lm_head"}};
  }
  bool ignorable_key(const std::string& k) const override {
    // Rotary tables some exporters save; a tied head duplicated in the checkpoint.
    // A causal-LM checkpoint loaded as a classifier: its LM head is unused (as transformers drops it).
    return k.find("rotary_emb.inv_freq") != std::string::npos || (c.tie && k == "lm_head.weight") ||
           (task_ == TaskType::SeqCls && k == "lm_head.weight");
  }
};

ModelPtr make_causal(const nlohmann::json& c) { return std::make_shared<LlamaForCausalLM>(c, TaskType::CausalLM); }
ModelPtr make_seqcls(const nlohmann::json& c) { return std::make_shared<LlamaForCausalLM>(c, TaskType::SeqCls); }

PEFT_REGISTER_MODEL("LlamaForCausalLM", "llama", TaskType::CausalLM, make_causal);
PEFT_REGISTER_MODEL("LlamaForSequenceClassification", "llama", TaskType::SeqCls, make_seqcls);
PEFT_REGISTER_MODEL("MistralForCausalLM", "mistral", TaskType::CausalLM, make_causal);
PEFT_REGISTER_MODEL("Qwen2ForCausalLM", "qwen2", TaskType::CausalLM, make_causal);

}  // namespace
}  // namespace peft
