// T5 (Raffel et al. 2020) as transformers' T5ForConditionalGeneration defines it, original and
// v1.1 checkpoints: pre-norm blocks with T5LayerNorm (RMS, no mean, no bias, float32), bucketed
// relative position biases shared by all layers of a stack (held by block 0; bidirectional in
// the encoder, causal in the decoder), unscaled dot-product attention, FFN
// `DenseReluDense` = wo(act(wi x)) or, gated (v1.1), wo(act(wi_0 x) * wi_1 x).
// Tied checkpoints (original T5) scale the decoder output by d_model**-0.5 before the head.
//
// Incremental decoding: ModelInput.cache holds the decoder self-attention keys/values (k, v,
// extended in place) and the cross-attention projections of the encoder output (cross_k,
// cross_v, computed once); pass encoder_hidden_states to skip the encoder.
#include <torch/torch.h>

#include <cmath>

#include "models/checkpoint.h"
#include "models/config_fields.h"
#include "peft/error.h"
#include "peft/model.h"
#include "peft/precision.h"

namespace peft {
namespace {

struct T5Config {
  int64_t d_model, d_kv, d_ff, n_layers, n_dec_layers, n_heads, vocab, num_buckets, max_distance;
  int64_t pad_id, decoder_start_id;
  double eps;
  bool gated, tie;
  std::string act;

  explicit T5Config(const nlohmann::json& c) {
    d_model = cfg_int(c, "d_model");
    d_kv = cfg_int(c, "d_kv");
    d_ff = cfg_int(c, "d_ff");
    n_layers = cfg_int(c, "num_layers");
    n_dec_layers = cfg_int(c, "num_decoder_layers", n_layers);
    n_heads = cfg_int(c, "num_heads");
    vocab = cfg_int(c, "vocab_size");
    PEFT_CHECK(d_model > 0 && d_kv > 0 && d_ff > 0 && n_layers > 0 && n_dec_layers > 0 && n_heads > 0 && vocab > 0,
               "config.json: sizes must be positive");
    num_buckets = cfg_int(c, "relative_attention_num_buckets", 32);
    max_distance = cfg_int(c, "relative_attention_max_distance", 128);
    PEFT_CHECK(num_buckets >= 4 && max_distance > num_buckets / 2,
               "config.json: relative_attention_num_buckets must be >= 4 and relative_attention_max_distance "
               "larger than half of it");
    eps = cfg_double(c, "layer_norm_epsilon", 1e-6);
    pad_id = cfg_int(c, "pad_token_id", 0);
    decoder_start_id = cfg_int(c, "decoder_start_token_id", pad_id);
    tie = cfg_bool(c, "tie_word_embeddings", true);
    // transformers' T5Config: feed_forward_proj is "{act}" or "gated-{act}"; "gated-gelu" means
    // gelu_new. Explicit dense_act_fn / is_gated_act in config.json win (they are set last).
    std::string ffp = cfg_str(c, "feed_forward_proj", "relu");
    auto dash = ffp.find('-');
    std::string head = dash == std::string::npos ? ffp : ffp.substr(0, dash);
    std::string tail = dash == std::string::npos ? ffp : ffp.substr(dash + 1);
    PEFT_CHECK(dash == std::string::npos || (head == "gated" && tail.find('-') == std::string::npos),
               "config.json: feed_forward_proj '", ffp, "' must be '{ACT}' or 'gated-{ACT}' (e.g. 'relu', 'gated-gelu')");
    gated = cfg_bool(c, "is_gated_act", dash != std::string::npos);
    act = cfg_str(c, "dense_act_fn", ffp == "gated-gelu" ? "gelu_new" : tail);
    check_activation_field(c.contains("dense_act_fn") ? "dense_act_fn" : "feed_forward_proj", act);
    refuse_common_fields(c);
  }
};

// transformers' T5Attention._relative_position_bucket: exact buckets for small distances,
// logarithmic up to max_distance; bidirectional uses half the buckets for each direction.
torch::Tensor relative_position_bucket(const torch::Tensor& rel, bool bidirectional, int64_t num_buckets,
                                       int64_t max_distance) {
  auto buckets = torch::zeros_like(rel);
  torch::Tensor r;
  int64_t n = num_buckets;
  if (bidirectional) {
    n /= 2;
    buckets = buckets + (rel > 0).to(torch::kLong) * n;
    r = rel.abs();
  } else {
    r = -torch::min(rel, torch::zeros_like(rel));
  }
  const int64_t max_exact = n / 2;
  auto is_small = r < max_exact;
  auto large = (torch::log(r.to(torch::kFloat32) / static_cast<double>(max_exact)) /
                std::log(static_cast<double>(max_distance) / max_exact) * static_cast<double>(n - max_exact))
                   .to(torch::kLong) +
               max_exact;
  large = torch::min(large, torch::full_like(large, n - 1));
  return buckets + torch::where(is_small, r, large);
}

class T5Attention : public Module {
 public:
  LayerPtr q, k, v, o;
  torch::nn::Embedding relative_attention_bias{nullptr};  // block 0 of each stack only
  const T5Config& c;
  bool bidirectional;
  T5Attention(const T5Config& cfg, bool has_bias, bool bidir) : c(cfg), bidirectional(bidir) {
    const int64_t inner = c.n_heads * c.d_kv;
    register_slot("q", q, std::make_shared<Linear>(c.d_model, inner, false));
    register_slot("k", k, std::make_shared<Linear>(c.d_model, inner, false));
    register_slot("v", v, std::make_shared<Linear>(c.d_model, inner, false));
    register_slot("o", o, std::make_shared<Linear>(inner, c.d_model, false));
    if (has_bias)
      relative_attention_bias = register_module("relative_attention_bias", torch::nn::Embedding(c.num_buckets, c.n_heads));
  }

  // Bias [1, H, Tq, Tk] for queries at positions past .. past + Tq - 1 and keys 0 .. Tk - 1.
  torch::Tensor compute_bias(int64_t past, int64_t tq, int64_t tk, torch::Device dev) {
    auto lopts = torch::TensorOptions().dtype(torch::kLong).device(dev);
    auto ctx = torch::arange(past, past + tq, lopts).unsqueeze(1);
    auto mem = torch::arange(tk, lopts).unsqueeze(0);
    auto buckets = relative_position_bucket(mem - ctx, bidirectional, c.num_buckets, c.max_distance);
    return relative_attention_bias->forward(buckets).permute({2, 0, 1}).unsqueeze(0);
  }

  torch::Tensor split(const torch::Tensor& t) {
    return t.view({t.size(0), t.size(1), c.n_heads, c.d_kv}).transpose(1, 2);
  }

  // Self-attention: kv = x, caches extended in place. Cross-attention (kv_states defined):
  // keys/values of the encoder output, reused from the caches when they cover it.
  // bias [B or 1, H, Tq, Tk] = position bias + mask.
  // prefix_k/v [B, H, P, d] (prefix tuning) go before the keys/values and are not cached;
  // `gate` scales them per query (UniPELT).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& kv_states, const torch::Tensor& bias,
                        torch::Tensor* k_cache, torch::Tensor* v_cache, const torch::Tensor& prefix_k = {},
                        const torch::Tensor& prefix_v = {}, const LayerPrefixGate& gate = {}) {
    const int64_t B = x.size(0), T = x.size(1);
    auto g = gate.of ? gate.of(x) : torch::Tensor();  // [B, 1, T, 1]
    auto qh = split(q->forward(x));
    torch::Tensor kh, vh;
    if (!kv_states.defined()) {
      kh = split(k->forward(x));
      vh = split(v->forward(x));
      if (k_cache) {
        if (k_cache->defined()) {
          kh = torch::cat({k_cache->to(kh.scalar_type()), kh}, 2);
          vh = torch::cat({v_cache->to(vh.scalar_type()), vh}, 2);
        }
        *k_cache = kh;
        *v_cache = vh;
      }
    } else if (k_cache && k_cache->defined() && k_cache->size(2) == kv_states.size(1)) {
      kh = *k_cache;
      vh = *v_cache;
    } else {
      // As transformers: a cached cross entry of another length (e.g. a prefix) is recomputed.
      kh = split(k->forward(kv_states));
      vh = split(v->forward(kv_states));
      if (k_cache) {
        *k_cache = kh;
        *v_cache = vh;
      }
    }
    if (prefix_k.defined()) {
      kh = torch::cat({prefix_k.to(kh.scalar_type()), kh}, 2);
      vh = torch::cat({prefix_v.to(vh.scalar_type()), vh}, 2);
    }
    auto scores = torch::matmul(qh, kh.transpose(2, 3));  // T5 does not scale by 1/sqrt(d)
    if (g.defined()) scores = gate_prefix_columns(scores, g, gate.P);
    scores = scores + bias;
    auto probs = torch::softmax(scores.to(compute_dtype(scores.scalar_type())), -1).to(scores.scalar_type());
    if (g.defined()) probs = gate_prefix_columns(probs, g, gate.P);
    return o->forward(torch::matmul(probs, vh).transpose(1, 2).reshape({B, T, c.n_heads * c.d_kv}));
  }
};

// layer_norm -> attention -> residual (T5LayerSelfAttention / T5LayerCrossAttention).
class T5LayerAttention : public Module {
 public:
  std::shared_ptr<T5Attention> attn;
  LayerPtr layer_norm;
  T5LayerAttention(const T5Config& c, const std::string& name, bool has_bias, bool bidir) {
    attn = register_module(name, std::make_shared<T5Attention>(c, has_bias, bidir));
    register_slot("layer_norm", layer_norm, std::make_shared<RMSNorm>(c.d_model, c.eps));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& kv_states, const torch::Tensor& bias,
                        torch::Tensor* kc, torch::Tensor* vc, const torch::Tensor& pk = {}, const torch::Tensor& pv = {},
                        const LayerPrefixGate& gate = {}) {
    return x + attn->forward(layer_norm->forward(x), kv_states, bias, kc, vc, pk, pv, gate);
  }
};

// T5DenseActDense (wi, wo) or T5DenseGatedActDense (wi_0, wi_1, wo); the activation is a slot.
class T5DenseReluDense : public Layer {
 public:
  LayerPtr wi, wi_0, wi_1, wo, act;
  const T5Config& c;
  explicit T5DenseReluDense(const T5Config& cfg) : c(cfg) {
    if (c.gated) {
      register_slot("wi_0", wi_0, std::make_shared<Linear>(c.d_model, c.d_ff, false));
      register_slot("wi_1", wi_1, std::make_shared<Linear>(c.d_model, c.d_ff, false));
    } else {
      register_slot("wi", wi, std::make_shared<Linear>(c.d_model, c.d_ff, false));
    }
    register_slot("wo", wo, std::make_shared<Linear>(c.d_ff, c.d_model, false));
    register_slot("act", act, std::make_shared<Activation>(c.act));
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto h = wi ? act->forward(wi->forward(x)) : act->forward(wi_0->forward(x)) * wi_1->forward(x);
    return wo->forward(h);
  }
  LayerPtr clone_layer() const override { return clone_slots_into(*this, std::make_shared<T5DenseReluDense>(c)); }
};

class T5LayerFF : public Module {
 public:
  LayerPtr DenseReluDense, layer_norm;
  explicit T5LayerFF(const T5Config& c) {
    register_slot("DenseReluDense", DenseReluDense, std::make_shared<T5DenseReluDense>(c));
    register_slot("layer_norm", layer_norm, std::make_shared<RMSNorm>(c.d_model, c.eps));
  }
  torch::Tensor forward(const torch::Tensor& x) { return x + DenseReluDense->forward(layer_norm->forward(x)); }
};

class T5Block : public Module {
 public:
  torch::nn::ModuleList layer;
  std::shared_ptr<T5LayerAttention> self_attn, cross_attn;  // cross: decoder only
  std::shared_ptr<T5LayerFF> ff;
  T5Block(const T5Config& c, bool decoder, bool has_bias) {
    layer = register_module("layer", torch::nn::ModuleList());
    self_attn = std::make_shared<T5LayerAttention>(c, "SelfAttention", has_bias, !decoder);
    layer->push_back(self_attn);
    if (decoder) {
      cross_attn = std::make_shared<T5LayerAttention>(c, "EncDecAttention", false, false);
      layer->push_back(cross_attn);
    }
    ff = std::make_shared<T5LayerFF>(c);
    layer->push_back(ff);
  }
};

class T5Stack : public Module {
 public:
  torch::nn::ModuleList block;
  std::vector<std::shared_ptr<T5Block>> blocks;
  LayerPtr final_layer_norm;
  torch::nn::Embedding embed_tokens;  // the shared embedding (not registered here)
  const T5Config& c;
  bool decoder;
  bool checkpoint = false;  // gradient checkpointing per block (set by the owner)
  T5Stack(const T5Config& cfg, bool is_decoder, torch::nn::Embedding shared)
      : embed_tokens(std::move(shared)), c(cfg), decoder(is_decoder) {
    block = register_module("block", torch::nn::ModuleList());
    const int64_t n = decoder ? c.n_dec_layers : c.n_layers;
    for (int64_t i = 0; i < n; ++i) {
      blocks.push_back(std::make_shared<T5Block>(c, decoder, i == 0));
      block->push_back(blocks.back());
    }
    register_slot("final_layer_norm", final_layer_norm, std::make_shared<RMSNorm>(c.d_model, c.eps));
  }

  // ids or embeds [B, T(, H)]; mask [B, past + T]; decoder: enc [B, S, H], enc_mask [B, S].
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& embeds, const torch::Tensor& mask,
                        const torch::Tensor& enc, const torch::Tensor& enc_mask, KVCache* cache,
                        std::vector<torch::Tensor>* hs, const AttentionPrefix* prefix = nullptr,
                        const PrefixGate* gate = nullptr) {
    torch::Tensor x = to_activation(embeds.defined() ? embeds : embed_tokens->forward(ids));
    const int64_t B = x.size(0), T = x.size(1), n = (int64_t)blocks.size();
    auto dev = x.device();
    auto dt = x.scalar_type();
    if (cache) {
      for (auto* vec : {&cache->k, &cache->v, &cache->cross_k, &cache->cross_v})
        if (vec->size() != (size_t)n) vec->resize(n);
    }
    const int64_t past = cache ? cache->length() : 0;
    // Prefix tuning: the P prefix keys sit at positions 0 .. P-1, before the cache and the input.
    static const std::vector<torch::Tensor> none;
    const auto& pk = !prefix ? none : decoder ? prefix->k : prefix->encoder_k;
    const auto& pv = !prefix ? none : decoder ? prefix->v : prefix->encoder_v;
    const auto& ck = prefix && decoder ? prefix->cross_k : none;
    const auto& cv = prefix && decoder ? prefix->cross_v : none;
    for (auto* p : {&pk, &pv, &ck, &cv})
      PEFT_CHECK(p->empty() || (int64_t)p->size() >= n, "T5: a key/value prefix has ", p->size(), " layers, the stack ", n);
    const int64_t P = pk.empty() ? 0 : pk[0].size(2), Pc = ck.empty() ? 0 : ck[0].size(2);
    auto with_ones = [&](const torch::Tensor& m, int64_t p) {
      return !m.defined() || p == 0 ? m : torch::cat({torch::ones({B, p}, m.options()), m}, 1);
    };
    auto self_mask = attention_bias(with_ones(mask, P), B, T, P + past + T, /*causal=*/decoder, dt, dev);
    auto self_bias = blocks[0]->self_attn->attn->compute_bias(P + past, T, P + past + T, dev).to(dt) + self_mask;
    // UniPELT's prefix gate: g_i averages over the stack's own tokens that query i attends.
    torch::Tensor visible;
    if (gate) {
      visible = self_mask.narrow(-1, P, past + T) == 0;
      if (cache) {
        cache->gate_scores.resize(n);
        cache->cross_gate_scores.resize(n);
      }
    }
    auto gate_of = [&](int site, int64_t i, int64_t p, std::vector<torch::Tensor>* cached) {
      // (the score caches exist only with a gate: no reference into an empty vector)
      return layer_prefix_gate(gate, site, i, p, visible, gate && cached ? &(*cached)[i] : nullptr);
    };
    torch::Tensor cross_bias;
    if (decoder) {
      PEFT_CHECK(enc.defined(), "T5 decoder: encoder hidden states required");
      PEFT_CHECK(enc.size(0) == B, "T5: encoder batch ", enc.size(0), " != decoder batch ", B);
      cross_bias = attention_bias(with_ones(enc_mask, Pc), B, T, Pc + enc.size(1), /*causal=*/false, dt, dev);
    }
    auto at = [](const std::vector<torch::Tensor>& v, int64_t i) { return v.empty() ? torch::Tensor() : v[i]; };
    refuse_checkpointed_prefix_gate(checkpoint, *this, static_cast<bool>(gate));
    for (int64_t i = 0; i < n; ++i) {
      if (hs) hs->push_back(x);
      auto block = blocks[i];
      const bool dec = decoder;
      torch::Tensor *kc = cache ? &cache->k[i] : nullptr, *vc = cache ? &cache->v[i] : nullptr;
      torch::Tensor *xkc = cache && dec ? &cache->cross_k[i] : nullptr, *xvc = cache && dec ? &cache->cross_v[i] : nullptr;
      auto self_gate = gate_of(dec ? PrefixGate::kSelf : PrefixGate::kEncoder, i, P, cache ? &cache->gate_scores : nullptr);
      auto cross_gate = dec ? gate_of(PrefixGate::kCross, i, Pc, cache ? &cache->cross_gate_scores : nullptr) : LayerPrefixGate();
      // Inputs: x, self bias, encoder states, cross bias, self/cross prefixes; caches: self, cross.
      x = run_cached_block(
          checkpoint, *block,
          [block, dec, self_gate, cross_gate](const std::vector<torch::Tensor>& t, const std::vector<torch::Tensor*>& kv) {
            auto y = block->self_attn->forward(t[0], torch::Tensor(), t[1], kv[0], kv[1], t[4], t[5], self_gate);
            if (dec) y = block->cross_attn->forward(y, t[2], t[3], kv[2], kv[3], t[6], t[7], cross_gate);
            return block->ff->forward(y);
          },
          {x, self_bias, enc, cross_bias, at(pk, i), at(pv, i), at(ck, i), at(cv, i)}, {kc, vc, xkc, xvc});
    }
    x = final_layer_norm->forward(x);
    if (hs) hs->push_back(x);
    return x;
  }
};

class T5ForConditionalGeneration : public PretrainedModel {
 public:
  T5Config c;
  torch::nn::Embedding shared{nullptr};
  std::shared_ptr<T5Stack> encoder, decoder;
  LayerPtr lm_head;  // unset when tied: the shared embedding is the head

  explicit T5ForConditionalGeneration(const nlohmann::json& cfg) : c(cfg) {
    shared = register_module("shared", torch::nn::Embedding(c.vocab, c.d_model));
    encoder = register_module("encoder", std::make_shared<T5Stack>(c, false, shared));
    decoder = register_module("decoder", std::make_shared<T5Stack>(c, true, shared));
    if (!c.tie) register_slot("lm_head", lm_head, std::make_shared<Linear>(c.d_model, c.vocab, false));
  }

  // labels shifted right: decoder_start_token_id first, -100 -> pad.
  torch::Tensor shift_right(const torch::Tensor& labels) const {
    auto out = torch::full_like(labels, c.decoder_start_id);
    out.slice(1, 1).copy_(labels.slice(1, 0, -1));
    return out.masked_fill(out == -100, c.pad_id);
  }

  ModelOutput forward(const ModelInput& in) override {
    ModelOutput out;
    encoder->checkpoint = decoder->checkpoint = memory_options(*this).gradient_checkpointing;
    torch::Tensor enc = in.encoder_hidden_states;
    if (!enc.defined()) {
      PEFT_CHECK(in.input_ids.defined() || in.inputs_embeds.defined(), "T5 forward: input_ids or inputs_embeds required");
      enc = encoder->forward(in.input_ids, in.inputs_embeds, in.attention_mask, {}, {}, nullptr,
                             in.output_hidden_states ? &out.encoder_hidden_states : nullptr, in.prefix.get(),
                             in.prefix_gate.get());
    }
    out.encoder_last_hidden_state = enc;
    torch::Tensor dec_ids = in.decoder_input_ids;
    if (!dec_ids.defined() && !in.decoder_inputs_embeds.defined()) {
      PEFT_CHECK(in.labels.defined(), "T5 forward: decoder_input_ids, decoder_inputs_embeds or labels required");
      dec_ids = shift_right(in.labels);
    }
    auto h = decoder->forward(dec_ids, in.decoder_inputs_embeds, in.decoder_attention_mask, enc, in.attention_mask,
                              in.cache, in.output_hidden_states ? &out.hidden_states : nullptr, in.prefix.get(),
                              in.prefix_gate.get());
    if (c.tie) {
      h = h * std::pow(static_cast<double>(c.d_model), -0.5);
      out.logits = tied_head_logits(h, shared->weight);
    } else {
      out.logits = lm_head->forward(h);
    }
    if (in.labels.defined()) {
      out.loss = torch::nn::functional::cross_entropy(
          out.logits.reshape({-1, out.logits.size(-1)}).to(compute_dtype(out.logits.scalar_type())), in.labels.reshape({-1}).to(torch::kLong),
          torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
    }
    return out;
  }

  torch::Tensor embed_tokens(const torch::Tensor& ids) override { return to_activation(shared->forward(ids)); }
  ModelDims dims() const override {
    ModelDims d;
    d.hidden_size = c.d_model;
    d.num_layers = c.n_layers;
    d.num_decoder_layers = c.n_dec_layers;
    d.num_heads = c.n_heads;
    d.num_kv_heads = c.n_heads;
    d.head_dim = c.d_kv;
    d.vocab_size = c.vocab;
    return d;
  }
  TaskType task() const override { return TaskType::Seq2SeqLM; }
  std::string model_type() const override { return "t5"; }
  std::string layers_pattern() const override { return "block"; }
  std::map<std::string, std::string> roles() const override {
    // q/k/v/o match both SelfAttention and EncDecAttention (as peft's t5 defaults do).
    std::map<std::string, std::string> r = {
        {role::kAttnQ, "q"},          {role::kAttnK, "k"},          {role::kAttnV, "v"},
        {role::kAttnO, "o"},          {role::kMlp, "DenseReluDense"}, {role::kMlpDown, "wo"},
        {role::kMlpAct, "act"},       {role::kNormAttn, "layer.0.layer_norm"},
        // The decoder's stack (the one the head reads): each block's input enters its first
        // layer_norm (pre-norm); the final norm's input is the last block's output. A regex ('^')
        // so that the encoder's blocks are left out.
        {role::kBlockIn, "^decoder\\.block\\.\\d+\\.layer\\.0\\.layer_norm"},
        {role::kNormFinal, "decoder.final_layer_norm"},
    };
    if (c.gated) {
      r[role::kMlpGate] = "wi_0";
      r[role::kMlpUp] = "wi_1";
    } else {
      r[role::kMlpUp] = "wi";
    }
    if (!c.tie) r[role::kHead] = "lm_head";
    return r;
  }
  bool ignorable_key(const std::string& k) const override {
    return k == "encoder.embed_tokens.weight" || k == "decoder.embed_tokens.weight" ||
           (c.tie && k == "lm_head.weight") ||
           k == "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight";
  }
  bool is_encoder_decoder() const override { return true; }
};

ModelPtr make_t5(const nlohmann::json& c) { return std::make_shared<T5ForConditionalGeneration>(c); }

PEFT_REGISTER_MODEL("T5ForConditionalGeneration", "t5", TaskType::Seq2SeqLM, make_t5);

}  // namespace
}  // namespace peft
