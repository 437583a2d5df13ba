// GPT-2 as transformers' GPT2LMHeadModel / GPT2ForSequenceClassification define it (Radford
// et al. 2019): pre-norm blocks x + attn(ln_1(x)), x + mlp(ln_2(x)); learned absolute position
// embeddings; Conv1D projections (weights [in, out], y = x W + b); fused c_attn producing
// q|k|v along the last dim; MLP c_proj(act(c_fc(x))) with gelu_new; ln_f after the last block;
// LM head tied to wte.
#include <torch/torch.h>

#include <cmath>

#include "models/checkpoint.h"
#include "models/config_fields.h"
#include "models/decoder_common.h"
#include "peft/error.h"
#include "peft/model.h"
#include "peft/precision.h"

namespace peft {
namespace {

struct GPT2Config {
  int64_t hidden, inner, n_layers, n_heads, head_dim, vocab, max_pos, num_labels;
  double eps;
  bool scale_attn, scale_by_layer, tie;
  std::string act;

  explicit GPT2Config(const nlohmann::json& c) {
    hidden = cfg_int(c, "n_embd", 768);
    n_layers = cfg_int(c, "n_layer", 12);
    n_heads = cfg_int(c, "n_head", 12);
    vocab = cfg_int(c, "vocab_size", 50257);
    max_pos = cfg_int(c, "n_positions", 1024);
    PEFT_CHECK(hidden > 0 && n_layers > 0 && n_heads > 0 && vocab > 0 && max_pos > 0,
               "config.json: n_embd, n_layer, n_head, vocab_size and n_positions must be positive");
    PEFT_CHECK(hidden % n_heads == 0, "config.json: n_embd (", hidden, ") must be a multiple of n_head (", n_heads,
               ")");
    head_dim = hidden / n_heads;
    inner = cfg_int(c, "n_inner", 4 * hidden);  // null -> 4 * n_embd, as GPT2MLP
    PEFT_CHECK(inner > 0, "config.json: n_inner must be positive, got ", inner);
    // Far beyond any released model: a corrupt value, not a reason to allocate terabytes.
    PEFT_CHECK(hidden <= (1 << 17) && inner <= (1 << 20) && n_layers <= (1 << 12) && vocab <= (1 << 24) &&
                   max_pos <= (1 << 20),
               "config.json: implausible sizes (n_embd ", hidden, ", n_inner ", inner, ", n_layer ", n_layers,
               ", vocab_size ", vocab, ", n_positions ", max_pos, ")");
    eps = cfg_double(c, "layer_norm_epsilon", 1e-5);
    act = cfg_str(c, "activation_function", "gelu_new");
    check_activation_field("activation_function", act);
    scale_attn = cfg_bool(c, "scale_attn_weights", true);
    scale_by_layer = cfg_bool(c, "scale_attn_by_inverse_layer_idx", false);
    tie = cfg_bool(c, "tie_word_embeddings", true);
    num_labels = c.contains("id2label") && c["id2label"].is_object() ? (int64_t)c["id2label"].size()
                                                                     : cfg_int(c, "num_labels", 2);
    refuse_common_fields(c);
    refuse_unless(c, "add_cross_attention", false, "GPT-2 with cross-attention layers is not supported");
    refuse_unsupported_problem_type(c, num_labels);
    refuse_unless(c, "reorder_and_upcast_attn", false,
                  "the upcast / reordered attention of GPT2Attention._upcast_and_reordered_attn is not supported");
  }
};

class GPT2Attention : public Module {
 public:
  LayerPtr c_attn, c_proj;
  const GPT2Config& c;
  int64_t layer_idx;
  GPT2Attention(const GPT2Config& cfg, int64_t idx) : c(cfg), layer_idx(idx) {
    register_slot("c_attn", c_attn, std::make_shared<Linear>(c.hidden, 3 * c.hidden, true, /*conv1d=*/true));
    register_slot("c_proj", c_proj, std::make_shared<Linear>(c.hidden, c.hidden, true, /*conv1d=*/true));
  }

  // x [B, T, H]; bias [B, 1, T, past + T] (causal + padding); caches extended in place.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& bias, torch::Tensor* k_cache,
                        torch::Tensor* v_cache, const LayerPrefixGate& gate) {
    const int64_t B = x.size(0), T = x.size(1);
    auto g = gate.of ? gate.of(x) : torch::Tensor();  // UniPELT's prefix gate [B, 1, T, 1]
    auto qkv = c_attn->forward(x).split(c.hidden, 2);
    auto heads = [&](const torch::Tensor& t) { return t.reshape({B, T, c.n_heads, c.head_dim}).transpose(1, 2); };
    auto q = heads(qkv[0]), k = heads(qkv[1]), v = heads(qkv[2]);
    if (k_cache) {
      if (k_cache->defined()) {
        k = torch::cat({k_cache->to(k.scalar_type()), k}, 2);
        v = torch::cat({v_cache->to(v.scalar_type()), v}, 2);
      }
      *k_cache = k;
      *v_cache = v;
    }
    // scores = q k^T / sqrt(head_dim) (scale_attn_weights), / (layer_idx + 1) when
    // scale_attn_by_inverse_layer_idx (GPT2Attention._attn).
    auto scores = torch::matmul(q, k.transpose(2, 3));
    if (c.scale_attn) scores = scores / std::sqrt(static_cast<double>(c.head_dim));
    if (c.scale_by_layer) scores = scores / static_cast<double>(layer_idx + 1);
    if (g.defined()) scores = gate_prefix_columns(scores, g, gate.P);
    scores = scores + bias;
    auto probs = torch::softmax(scores.to(compute_dtype(scores.scalar_type())), -1).to(q.scalar_type());
    if (g.defined()) probs = gate_prefix_columns(probs, g, gate.P);
    auto out = torch::matmul(probs, v).transpose(1, 2).reshape({B, T, c.hidden});
    return c_proj->forward(out);
  }
};

class GPT2MLP : public Layer {
 public:
  LayerPtr c_fc, c_proj, act;
  const GPT2Config& c;
  explicit GPT2MLP(const GPT2Config& cfg) : c(cfg) {
    register_slot("c_fc", c_fc, std::make_shared<Linear>(c.hidden, c.inner, true, /*conv1d=*/true));
    register_slot("c_proj", c_proj, std::make_shared<Linear>(c.inner, c.hidden, true, /*conv1d=*/true));
    register_slot("act", act, std::make_shared<Activation>(c.act));
  }
  torch::Tensor forward(const torch::Tensor& x) override { return c_proj->forward(act->forward(c_fc->forward(x))); }
  LayerPtr clone_layer() const override { return clone_slots_into(*this, std::make_shared<GPT2MLP>(c)); }
};

class GPT2Block : public Module {
 public:
  std::shared_ptr<GPT2Attention> attn;
  LayerPtr ln_1, ln_2, mlp;
  GPT2Block(const GPT2Config& c, int64_t idx) {
    register_slot("ln_1", ln_1, std::make_shared<LayerNorm>(c.hidden, c.eps));
    attn = register_module("attn", std::make_shared<GPT2Attention>(c, idx));
    register_slot("ln_2", ln_2, std::make_shared<LayerNorm>(c.hidden, c.eps));
    register_slot("mlp", mlp, std::make_shared<GPT2MLP>(c));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& bias, torch::Tensor* kc, torch::Tensor* vc,
                        const LayerPrefixGate& gate) {
    auto h = x + attn->forward(ln_1->forward(x), bias, kc, vc, gate);
    return h + mlp->forward(ln_2->forward(h));
  }
};

class GPT2Model : public Module {
 public:
  torch::nn::Embedding wte{nullptr}, wpe{nullptr};
  torch::nn::ModuleList h;
  LayerPtr ln_f;
  std::vector<std::shared_ptr<GPT2Block>> blocks;
  const GPT2Config& c;
  bool checkpoint = false;  // gradient checkpointing per block (set by the owner)
  explicit GPT2Model(const GPT2Config& cfg) : c(cfg) {
    wte = register_module("wte", torch::nn::Embedding(c.vocab, c.hidden));
    wpe = register_module("wpe", torch::nn::Embedding(c.max_pos, c.hidden));
    h = register_module("h", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.n_layers; ++i) {
      blocks.push_back(std::make_shared<GPT2Block>(c, i));
      h->push_back(blocks.back());
    }
    register_slot("ln_f", ln_f, std::make_shared<LayerNorm>(c.hidden, c.eps));
  }

  // Returns the final hidden state (after ln_f); fills `hs` in transformers' convention.
  torch::Tensor forward(const ModelInput& in, std::vector<torch::Tensor>* hs) {
    PEFT_CHECK(in.inputs_embeds.defined() || (in.input_ids.defined() && in.input_ids.dim() == 2),
               "gpt2: input_ids must be [batch, seq]");
    if (!in.inputs_embeds.defined() && in.input_ids.numel() > 0)
      PEFT_CHECK(in.input_ids.min().item<int64_t>() >= 0 && in.input_ids.max().item<int64_t>() < c.vocab,
                 "gpt2: input_ids must lie in [0, vocab_size = ", c.vocab, ")");
    torch::Tensor x = to_activation(in.inputs_embeds.defined() ? in.inputs_embeds : wte->forward(in.input_ids));
    const int64_t B = x.size(0), T = x.size(1);
    KVCache* cache = in.cache;
    if (cache && cache->k.size() != (size_t)c.n_layers) {
      cache->k.resize(c.n_layers);
      cache->v.resize(c.n_layers);
    }
    const int64_t past = cache ? cache->length() : 0;
    auto dev = x.device();
    // Learned absolute positions arange(past, past + T), not derived from the mask (GPT2Model).
    torch::Tensor pos;
    if (in.position_ids.defined()) {
      pos = in.position_ids.to(dev);
      PEFT_CHECK(pos.numel() == 0 || (pos.min().item<int64_t>() >= 0 && pos.max().item<int64_t>() < c.max_pos),
                 "gpt2: position_ids must lie in [0, n_positions = ", c.max_pos, ")");
    } else {
      PEFT_CHECK(past + T <= c.max_pos, "gpt2: sequence of ", past + T, " tokens (", past,
                 " cached) exceeds n_positions = ", c.max_pos);
      pos = torch::arange(past, past + T, torch::TensorOptions().dtype(torch::kLong).device(dev)).unsqueeze(0);
    }
    x = x + wpe->forward(pos).to(x.scalar_type());
    if (in.token_type_ids.defined()) x = x + to_activation(wte->forward(in.token_type_ids.to(dev)));  // as GPT2Model
    auto bias = attention_bias(in.attention_mask, B, T, past + T, /*causal=*/true, x.scalar_type(), dev);
    auto gates = kv_prefix_gates(in.prefix_gate.get(), c.n_layers, bias, cache);
    refuse_checkpointed_prefix_gate(checkpoint, *this, static_cast<bool>(in.prefix_gate));
    for (int64_t i = 0; i < c.n_layers; ++i) {
      if (hs) hs->push_back(x);
      torch::Tensor *kc = cache ? &cache->k[i] : nullptr, *vc = cache ? &cache->v[i] : nullptr;
      auto block = blocks[i];
      LayerPrefixGate gate = gates[i];
      x = run_cached_block(
          checkpoint, *block,
          [block, gate](const std::vector<torch::Tensor>& t, const std::vector<torch::Tensor*>& kv) {
            return block->forward(t[0], t[1], kv[0], kv[1], gate);
          },
          {x, bias}, {kc, vc});
    }
    x = ln_f->forward(x);
    if (hs) hs->push_back(x);
    return x;
  }
};

class GPT2LMHeadModel : public PretrainedModel {
 public:
  GPT2Config c;
  std::shared_ptr<GPT2Model> transformer;
  LayerPtr lm_head;  // unset when tied (the default): logits = h wte^T
  LayerPtr score;    // SeqCls head
  TaskType task_;

  GPT2LMHeadModel(const nlohmann::json& cfg, TaskType task) : c(cfg), task_(task) {
    transformer = register_module("transformer", std::make_shared<GPT2Model>(c));
    if (task_ == TaskType::SeqCls) {
      PEFT_CHECK(c.num_labels > 0 && c.num_labels <= (1 << 20), "config.json: num_labels (or id2label) must give 1 to ",
                 1 << 20, " labels, got ", c.num_labels);
      register_slot("score", score, std::make_shared<Linear>(c.hidden, c.num_labels, false));
    } else if (!c.tie) {
      register_slot("lm_head", lm_head, std::make_shared<Linear>(c.hidden, c.vocab, false));
    }
  }

  ModelOutput forward(const ModelInput& in) override {
    ModelOutput out;
    const MemoryOptions mem = memory_options(*this);
    transformer->checkpoint = mem.gradient_checkpointing;
    auto h = transformer->forward(in, in.output_hidden_states ? &out.hidden_states : nullptr);
    decoder_head_output(out, h, in, task_, score, lm_head, transformer->wte->weight,
                        checkpoint_active(mem.loss_chunk_tokens > 0, *this) ? mem.loss_chunk_tokens : 0);
    return out;
  }
  torch::Tensor embed_tokens(const torch::Tensor& ids) override { return to_activation(transformer->wte->forward(ids)); }
  ModelDims dims() const override {
    ModelDims d;
    d.hidden_size = c.hidden;
    d.num_layers = c.n_layers;
    d.num_heads = c.n_heads;
    d.num_kv_heads = c.n_heads;
    d.head_dim = c.head_dim;
    d.vocab_size = c.vocab;
    return d;
  }
  TaskType task() const override { return task_; }
  std::string model_type() const override { return "gpt2"; }
  std::string layers_pattern() const override { return "h"; }
  std::map<std::string, std::string> roles() const override {
    // Dotted suffixes: a bare "c_proj" would match both attn.c_proj and mlp.c_proj.
    return {{role::kAttnQkv, "attn.c_attn"}, {role::kAttnO, "attn.c_proj"},  {role::kMlpUp, "mlp.c_fc"},
            {role::kMlpDown, "mlp.c_proj"},  {role::kMlp, "mlp"},             {role::kMlpAct, "mlp.act"},
            {role::kNormAttn, "ln_1"},       {role::kNormMlp, "ln_2"},
            {role::kBlockIn, "ln_1"},        {role::kNormFinal, "ln_f"},
            {role::kHead, task_ == TaskType::SeqCls ? "score" : "lm_head"}};
  }
  bool ignorable_key(const std::string& k) const override {
    // Causal-mask buffers old checkpoints store (attn.bias, attn.masked_bias); the tied head.
    auto ends_with = [&](const std::string& s) {
      return k.size() >= s.size() && k.compare(k.size() - s.size(), s.size(), s) == 0;
    };
    return ends_with(".attn.bias") || ends_with(".attn.masked_bias") || (c.tie && k == "lm_head.weight");
  }
};

ModelPtr make_causal(const nlohmann::json& c) { return std::make_shared<GPT2LMHeadModel>(c, TaskType::CausalLM); }
ModelPtr make_seqcls(const nlohmann::json& c) { return std::make_shared<GPT2LMHeadModel>(c, TaskType::SeqCls); }

PEFT_REGISTER_MODEL("GPT2LMHeadModel", "gpt2", TaskType::CausalLM, make_causal);
PEFT_REGISTER_MODEL("GPT2ForSequenceClassification", "gpt2", TaskType::SeqCls, make_seqcls);

}  // namespace
}  // namespace peft
