// BERT (Devlin et al. 2019) and RoBERTa (Liu et al. 2019) encoders as transformers'
// BertModel / BertForSequenceClassification / RobertaModel / RobertaForSequenceClassification
// define them: learned absolute position and segment embeddings, post-norm blocks
// (x = LN(x + attn(x)); x = LN(x + out(act(inter(x))))), bidirectional attention.
//
// The two differ only in position ids (RoBERTa counts non-pad tokens from pad_token_id + 1) and
// in the classification head (BERT: pooler dense+tanh on token 0, then `classifier`; RoBERTa:
// `classifier.dense` -> tanh -> `classifier.out_proj` on token 0, no pooler).
//
// Prefix tuning passes a KVCache holding P prefix keys/values per layer and an attention mask of
// length P + T: each self-attention prepends them (as transformers' past_key_values), and
// default positions continue after them (BERT: arange(P, P + T); RoBERTa: non-pad count + P).
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

struct BertConfig {
  int64_t hidden, intermediate, n_layers, n_heads, head_dim, vocab, max_pos, type_vocab, pad_id, num_labels;
  double eps;
  std::string act, problem_type;
  bool roberta;

  BertConfig(const nlohmann::json& c, bool is_roberta) : roberta(is_roberta) {
    hidden = cfg_int(c, "hidden_size");
    intermediate = cfg_int(c, "intermediate_size");
    n_layers = cfg_int(c, "num_hidden_layers");
    n_heads = cfg_int(c, "num_attention_heads");
    vocab = cfg_int(c, "vocab_size");
    PEFT_CHECK(hidden > 0 && intermediate > 0 && n_layers > 0 && n_heads > 0 && vocab > 0,
               "config.json: sizes must be positive");
    PEFT_CHECK(hidden % n_heads == 0, "config.json: hidden_size (", hidden,
               ") must be a multiple of num_attention_heads (", n_heads, ")");
    head_dim = hidden / n_heads;
    max_pos = cfg_int(c, "max_position_embeddings", 512);
    type_vocab = cfg_int(c, "type_vocab_size", 2);
    pad_id = cfg_int(c, "pad_token_id", roberta ? 1 : 0);
    PEFT_CHECK(max_pos > 0 && type_vocab > 0, "config.json: max_position_embeddings and type_vocab_size must be positive");
    eps = cfg_double(c, "layer_norm_eps", 1e-12);
    act = cfg_str(c, "hidden_act", "gelu");
    check_activation_field("hidden_act", act);
    refuse_unless(c, "position_embedding_type", "absolute",
                  "relative position embeddings (relative_key, relative_key_query) are not supported (only 'absolute')");
    refuse_common_fields(c);
    refuse_unless(c, "is_decoder", false, "a causal (decoder) BERT / RoBERTa is not supported");
    refuse_unless(c, "add_cross_attention", false, "BERT / RoBERTa with cross-attention layers is not supported");
    num_labels = c.contains("id2label") && c["id2label"].is_object() ? (int64_t)c["id2label"].size()
                                                                     : cfg_int(c, "num_labels", 2);
    problem_type = cfg_str(c, "problem_type", "");
    PEFT_CHECK(problem_type.empty() || problem_type == "regression" || problem_type == "single_label_classification" ||
                   problem_type == "multi_label_classification",
               "config.json: unknown problem_type '", problem_type,
               "' (regression, single_label_classification, multi_label_classification)");
  }
};

class BertEmbeddings : public Module {
 public:
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  LayerPtr LayerNorm_;
  const BertConfig& c;
  explicit BertEmbeddings(const BertConfig& cfg) : c(cfg) {
    word_embeddings = register_module("word_embeddings", torch::nn::Embedding(c.vocab, c.hidden));
    position_embeddings = register_module("position_embeddings", torch::nn::Embedding(c.max_pos, c.hidden));
    token_type_embeddings = register_module("token_type_embeddings", torch::nn::Embedding(c.type_vocab, c.hidden));
    register_slot("LayerNorm", LayerNorm_, std::make_shared<LayerNorm>(c.hidden, c.eps));
  }

  // Position ids as transformers computes them when none are given (`past` = cached length).
  torch::Tensor default_positions(const ModelInput& in, int64_t B, int64_t T, int64_t past, torch::Device dev) {
    auto lopts = torch::TensorOptions().dtype(torch::kLong).device(dev);
    if (!c.roberta) return torch::arange(past, past + T, lopts).unsqueeze(0).expand({B, T});
    if (in.input_ids.defined() && !in.inputs_embeds.defined()) {
      // RoBERTa: (cumsum(ids != pad) + past) * (ids != pad) + pad; padding keeps position pad.
      auto m = in.input_ids.ne(c.pad_id).to(torch::kLong);
      return ((torch::cumsum(m, 1) + past) * m + c.pad_id).to(dev);
    }
    // From embeddings the pad positions cannot be told apart: pad + 1 .. pad + T.
    return torch::arange(c.pad_id + 1, c.pad_id + 1 + T, lopts).unsqueeze(0).expand({B, T});
  }

  torch::Tensor forward(const ModelInput& in, int64_t past) {
    torch::Tensor x = to_activation(in.inputs_embeds.defined() ? in.inputs_embeds : word_embeddings->forward(in.input_ids));
    const int64_t B = x.size(0), T = x.size(1);
    auto dev = x.device();
    torch::Tensor pos = in.position_ids.defined() ? in.position_ids.to(dev) : default_positions(in, B, T, past, dev);
    PEFT_CHECK(pos.numel() == 0 || pos.max().item<int64_t>() < c.max_pos, "position ids reach ", pos.max().item<int64_t>(),
               " but max_position_embeddings is ", c.max_pos, " (sequence too long)");
    torch::Tensor tt = in.token_type_ids.defined()
                           ? in.token_type_ids.to(dev)
                           : torch::zeros({B, T}, torch::TensorOptions().dtype(torch::kLong).device(dev));
    PEFT_CHECK(tt.sizes() == torch::IntArrayRef({B, T}), "token_type_ids has shape ", tt.sizes(), ", expected [", B,
               ", ", T, "]");
    x = x + to_activation(token_type_embeddings->forward(tt)) + to_activation(position_embeddings->forward(pos));
    return LayerNorm_->forward(x);
  }
};

class BertSelfAttention : public Module {
 public:
  LayerPtr query, key, value;
  const BertConfig& c;
  explicit BertSelfAttention(const BertConfig& cfg) : c(cfg) {
    register_slot("query", query, std::make_shared<Linear>(c.hidden, c.hidden, true));
    register_slot("key", key, std::make_shared<Linear>(c.hidden, c.hidden, true));
    register_slot("value", value, std::make_shared<Linear>(c.hidden, c.hidden, true));
  }
  // x [B, T, H]; bias [B, 1, T, past + T]; k_cache/v_cache (prefix) prepended and extended in place.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& bias, torch::Tensor* k_cache,
                        torch::Tensor* v_cache, const LayerPrefixGate& gate) {
    const int64_t B = x.size(0), T = x.size(1);
    auto g = gate.of ? gate.of(x) : torch::Tensor();  // UniPELT's prefix gate [B, 1, T, 1]
    auto q = query->forward(x).view({B, T, c.n_heads, c.head_dim}).transpose(1, 2);
    auto k = key->forward(x).view({B, T, c.n_heads, c.head_dim}).transpose(1, 2);
    auto v = value->forward(x).view({B, T, c.n_heads, c.head_dim}).transpose(1, 2);
    if (k_cache) {
      if (k_cache->defined()) {
        k = torch::cat({k_cache->to(k.scalar_type()), k}, 2);
        v = torch::cat({v_cache->to(v.scalar_type()), v}, 2);
      }
      *k_cache = k;
      *v_cache = v;
    }
    auto scores = torch::matmul(q, k.transpose(2, 3)) / std::sqrt(static_cast<double>(c.head_dim));
    if (g.defined()) scores = gate_prefix_columns(scores, g, gate.P);
    scores = scores + bias;
    auto probs = torch::softmax(scores.to(compute_dtype(scores.scalar_type())), -1).to(q.scalar_type());
    if (g.defined()) probs = gate_prefix_columns(probs, g, gate.P);
    return torch::matmul(probs, v).transpose(1, 2).reshape({B, T, c.hidden});
  }
};

// dense -> (+ residual) -> LayerNorm; BertSelfOutput and BertOutput alike.
class BertOutput : public Module {
 public:
  LayerPtr dense, LayerNorm_;
  BertOutput(const BertConfig& c, int64_t in_features) {
    register_slot("dense", dense, std::make_shared<Linear>(in_features, c.hidden, true));
    register_slot("LayerNorm", LayerNorm_, std::make_shared<LayerNorm>(c.hidden, c.eps));
  }
  torch::Tensor forward(const torch::Tensor& h, const torch::Tensor& residual) {
    return LayerNorm_->forward(dense->forward(h) + residual);
  }
};

class BertAttention : public Module {
 public:
  std::shared_ptr<BertSelfAttention> self_;
  std::shared_ptr<BertOutput> output;
  explicit BertAttention(const BertConfig& c) {
    self_ = register_module("self", std::make_shared<BertSelfAttention>(c));
    output = register_module("output", std::make_shared<BertOutput>(c, c.hidden));
  }
};

// dense -> activation: the first half of the FFN (a slot, as is each of its children).
class BertIntermediate : public Layer {
 public:
  LayerPtr dense, intermediate_act_fn;
  const BertConfig& c;
  explicit BertIntermediate(const BertConfig& cfg) : c(cfg) {
    register_slot("dense", dense, std::make_shared<Linear>(c.hidden, c.intermediate, true));
    register_slot("intermediate_act_fn", intermediate_act_fn, std::make_shared<Activation>(c.act));
  }
  torch::Tensor forward(const torch::Tensor& x) override { return intermediate_act_fn->forward(dense->forward(x)); }
  LayerPtr clone_layer() const override { return clone_slots_into(*this, std::make_shared<BertIntermediate>(c)); }
};

// The whole FFN before its residual add, output.dense(intermediate(x)), as one slot `mlp`: the
// model's "mlp" role, where a parallel adapter reads the FFN input and adds to its output (He et
// al. 2022, eq. 8). transformers has no such module; this one is a view with no parameters of
// its own (it calls its block's `intermediate` and `output.dense` slots, wrapped or not), so the
// checkpoint's names are unchanged. Its copy (clone_layer) is the same view: it has nothing to
// copy, and modules_to_save refuses modules without parameters.
class BertFeedForward : public Layer {
 public:
  BertFeedForward(LayerPtr* intermediate, BertOutput* output) : intermediate_(intermediate), output_(output) {}
  torch::Tensor forward(const torch::Tensor& x) override { return output_->dense->forward((*intermediate_)->forward(x)); }
  LayerPtr clone_layer() const override { return std::make_shared<BertFeedForward>(intermediate_, output_); }

 private:
  LayerPtr* intermediate_;  // the owning BertLayer's members (it owns this view too)
  BertOutput* output_;
};

class BertLayer : public Module {
 public:
  std::shared_ptr<BertAttention> attention;
  LayerPtr intermediate, mlp;
  std::shared_ptr<BertOutput> output;
  explicit BertLayer(const BertConfig& c) {
    attention = register_module("attention", std::make_shared<BertAttention>(c));
    register_slot("intermediate", intermediate, std::make_shared<BertIntermediate>(c));
    output = register_module("output", std::make_shared<BertOutput>(c, c.intermediate));
    register_slot("mlp", mlp, std::make_shared<BertFeedForward>(&intermediate, output.get()));
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& bias, torch::Tensor* kc, torch::Tensor* vc,
                        const LayerPrefixGate& gate) {
    auto a = attention->output->forward(attention->self_->forward(x, bias, kc, vc, gate), x);
    return output->LayerNorm_->forward(mlp->forward(a) + a);  // = output->forward(intermediate(a), a)
  }
};

class BertEncoder : public Module {
 public:
  torch::nn::ModuleList layer;
  std::vector<std::shared_ptr<BertLayer>> blocks;
  explicit BertEncoder(const BertConfig& c) {
    layer = register_module("layer", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.n_layers; ++i) {
      blocks.push_back(std::make_shared<BertLayer>(c));
      layer->push_back(blocks.back());
    }
  }
};

// dense + tanh on the first token's hidden state.
class BertPooler : public Module {
 public:
  LayerPtr dense, activation;
  explicit BertPooler(const BertConfig& c) {
    register_slot("dense", dense, std::make_shared<Linear>(c.hidden, c.hidden, true));
    register_slot("activation", activation, std::make_shared<Activation>("tanh"));
  }
  torch::Tensor forward(const torch::Tensor& hidden) { return activation->forward(dense->forward(hidden.select(1, 0))); }
};

// RoBERTa's head: dense -> tanh -> out_proj on token 0; takes the whole sequence [B, T, H] as
// transformers' RobertaClassificationHead does (so modules_to_save wraps it unchanged).
class RobertaClassificationHead : public Layer {
 public:
  LayerPtr dense, out_proj;
  const BertConfig& c;
  explicit RobertaClassificationHead(const BertConfig& cfg) : c(cfg) {
    register_slot("dense", dense, std::make_shared<Linear>(c.hidden, c.hidden, true));
    register_slot("out_proj", out_proj, std::make_shared<Linear>(c.hidden, c.num_labels, true));
  }
  torch::Tensor forward(const torch::Tensor& features) override {
    return out_proj->forward(torch::tanh(dense->forward(features.select(1, 0))));
  }
  // modules_to_save copies the whole head (as peft deep-copies RobertaClassificationHead).
  LayerPtr clone_layer() const override { return clone_slots_into(*this, std::make_shared<RobertaClassificationHead>(c)); }
};

// embeddings + encoder (+ pooler), registered on `owner`: a `bert`/`roberta` child for the task
// models, the root itself for the bare BertModel / RobertaModel (whose checkpoints have no prefix).
struct BertCore {
  std::shared_ptr<BertEmbeddings> embeddings;
  std::shared_ptr<BertEncoder> encoder;
  std::shared_ptr<BertPooler> pooler;  // null when absent
  const BertConfig* c = nullptr;
  bool checkpoint = false;  // gradient checkpointing per layer (set by the owner)

  void build(Module& owner, const BertConfig& cfg, bool with_pooler) {
    c = &cfg;
    embeddings = owner.register_module("embeddings", std::make_shared<BertEmbeddings>(cfg));
    encoder = owner.register_module("encoder", std::make_shared<BertEncoder>(cfg));
    if (with_pooler) pooler = owner.register_module("pooler", std::make_shared<BertPooler>(cfg));
  }

  // Last hidden state [B, T, H]; `hs`: embeddings output, then each layer's output.
  torch::Tensor forward(const ModelInput& in, std::vector<torch::Tensor>* hs) {
    PEFT_CHECK(in.input_ids.defined() || in.inputs_embeds.defined(), "forward: input_ids or inputs_embeds required");
    KVCache* cache = in.cache;
    if (cache && cache->k.size() != (size_t)c->n_layers) {
      cache->k.resize(c->n_layers);
      cache->v.resize(c->n_layers);
    }
    const int64_t past = cache ? cache->length() : 0;
    auto x = embeddings->forward(in, past);
    const int64_t B = x.size(0), T = x.size(1);
    auto bias = attention_bias(in.attention_mask, B, T, past + T, /*causal=*/false, x.scalar_type(), x.device());
    auto gates = kv_prefix_gates(in.prefix_gate.get(), c->n_layers, bias, cache);
    if (hs) hs->push_back(x);
    refuse_checkpointed_prefix_gate(checkpoint, *encoder, static_cast<bool>(in.prefix_gate));
    for (int64_t i = 0; i < c->n_layers; ++i) {
      torch::Tensor *kc = cache ? &cache->k[i] : nullptr, *vc = cache ? &cache->v[i] : nullptr;
      auto block = encoder->blocks[i];
      LayerPrefixGate gate = gates[i];
      x = run_cached_block(
          checkpoint, *block,
          [block, gate](const std::vector<torch::Tensor>& t, const std::vector<torch::Tensor*>& kv) {
            return block->forward(t[0], t[1], kv[0], kv[1], gate);
          },
          {x, bias}, {kc, vc});
      if (hs) hs->push_back(x);
    }
    return x;
  }
};

// transformers' *ForSequenceClassification loss: problem_type from the config, else inferred
// (num_labels == 1: regression; integer labels: single-label; otherwise multi-label).
torch::Tensor encoder_seq_cls_loss(const torch::Tensor& logits, const torch::Tensor& labels,
                                   const std::string& problem_type) {
  namespace F = torch::nn::functional;
  const int64_t n = logits.size(-1);
  std::string pt = problem_type;
  if (pt.empty()) {
    bool integral = labels.scalar_type() == torch::kLong || labels.scalar_type() == torch::kInt;
    pt = n == 1 ? "regression" : integral ? "single_label_classification" : "multi_label_classification";
  }
  if (pt == "regression") {
    auto ct = compute_dtype(logits.scalar_type());
    auto lf = logits.to(ct), yf = labels.to(ct);
    if (n == 1) return F::mse_loss(lf.squeeze(), yf.squeeze());
    return F::mse_loss(lf, yf);
  }
  if (pt == "multi_label_classification") {
    PEFT_CHECK(labels.sizes() == logits.sizes(), "multi-label labels have shape ", labels.sizes(), ", expected ",
               logits.sizes());
    return F::binary_cross_entropy_with_logits(logits.to(torch::kFloat32), labels.to(torch::kFloat32));
  }
  return seq_cls_loss(logits.view({-1, n}), labels.view({-1}));
}

class BertPretrained : public PretrainedModel {
 public:
  BertConfig c;
  TaskType task_;
  std::shared_ptr<Module> inner;  // `bert` / `roberta` (task models only)
  BertCore core;
  LayerPtr classifier;

  BertPretrained(const nlohmann::json& cfg, bool roberta, TaskType task) : c(cfg, roberta), task_(task) {
    if (task_ == TaskType::SeqCls) {
      inner = register_module(roberta ? "roberta" : "bert", std::make_shared<Module>());
      core.build(*inner, c, /*with_pooler=*/!roberta);
      if (roberta)
        register_slot("classifier", classifier, std::make_shared<RobertaClassificationHead>(c));
      else
        register_slot("classifier", classifier, std::make_shared<Linear>(c.hidden, c.num_labels, true));
    } else {
      core.build(*this, c, cfg_bool(cfg, "add_pooling_layer", true));
    }
  }

  ModelOutput forward(const ModelInput& in) override {
    ModelOutput out;
    core.checkpoint = memory_options(*this).gradient_checkpointing;
    auto h = core.forward(in, in.output_hidden_states ? &out.hidden_states : nullptr);
    if (task_ != TaskType::SeqCls) {
      out.logits = h;
      return out;
    }
    out.logits = c.roberta ? classifier->forward(h) : classifier->forward(core.pooler->forward(h));
    if (in.labels.defined()) out.loss = encoder_seq_cls_loss(out.logits, in.labels, c.problem_type);
    return out;
  }
  torch::Tensor embed_tokens(const torch::Tensor& ids) override {
    return to_activation(core.embeddings->word_embeddings->forward(ids));
  }
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
  std::string model_type() const override { return c.roberta ? "roberta" : "bert"; }
  std::string layers_pattern() const override { return "layer"; }
  std::map<std::string, std::string> roles() const override {
    // Suffixes match on '.' boundaries, so "output.dense" / "output.LayerNorm" (the FFN's) also
    // match attention.output.dense / attention.output.LayerNorm, exactly as peft's defaults do.
    std::map<std::string, std::string> r = {
        {role::kAttnQ, "query"},
        {role::kAttnK, "key"},
        {role::kAttnV, "value"},
        {role::kAttnO, "attention.output.dense"},
        {role::kMlpUp, "intermediate.dense"},
        {role::kMlpDown, "output.dense"},
        {role::kMlp, "mlp"},  // BertFeedForward: a parameter-free view of the FFN
        {role::kMlpAct, "intermediate_act_fn"},
        {role::kNormAttn, "attention.output.LayerNorm"},
        {role::kNormMlp, "output.LayerNorm"},
        // Post-norm: the modules whose outputs are the embeddings' and each block's hidden state
        // (h_0 .. h_L; the last is the encoder's last hidden state). A regex ('^'): a suffix
        // "output.LayerNorm" would also take attention.output.LayerNorm.
        {role::kBlockOut, "^(.*\\.)?(embeddings\\.LayerNorm|encoder\\.layer\\.\\d+\\.output\\.LayerNorm)"},
    };
    if (task_ == TaskType::SeqCls) r[role::kHead] = "classifier";
    return r;
  }
  bool ignorable_key(const std::string& k) const override {
    // Non-persistent buffers some exporters save; MLM / pretraining heads of base checkpoints.
    auto ends = [&](const std::string& s) { return k.size() >= s.size() && k.compare(k.size() - s.size(), s.size(), s) == 0; };
    return ends("embeddings.position_ids") || ends("embeddings.token_type_ids") || k.rfind("cls.", 0) == 0 ||
           k.rfind("lm_head.", 0) == 0 || (task_ == TaskType::SeqCls && c.roberta && k.rfind("roberta.pooler.", 0) == 0);
  }
};

ModelPtr make_bert(const nlohmann::json& c) { return std::make_shared<BertPretrained>(c, false, TaskType::FeatureExtraction); }
ModelPtr make_bert_cls(const nlohmann::json& c) { return std::make_shared<BertPretrained>(c, false, TaskType::SeqCls); }
ModelPtr make_roberta(const nlohmann::json& c) { return std::make_shared<BertPretrained>(c, true, TaskType::FeatureExtraction); }
ModelPtr make_roberta_cls(const nlohmann::json& c) { return std::make_shared<BertPretrained>(c, true, TaskType::SeqCls); }

PEFT_REGISTER_MODEL("BertModel", "bert", TaskType::FeatureExtraction, make_bert);
PEFT_REGISTER_MODEL("BertForSequenceClassification", "bert", TaskType::SeqCls, make_bert_cls);
PEFT_REGISTER_MODEL("RobertaModel", "roberta", TaskType::FeatureExtraction, make_roberta);
PEFT_REGISTER_MODEL("RobertaForSequenceClassification", "roberta", TaskType::SeqCls, make_roberta_cls);

}  // namespace
}  // namespace peft
