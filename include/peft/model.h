// Pretrained models: the common interface of every family (decoder, encoder, encoder-decoder),
// a registry keyed by config.json's `architectures` / `model_type`, and load_model().
//
//   auto model = peft::load_model("assets/stories260K");          // config.json + safetensors
//   peft::ModelInput in; in.input_ids = ids; in.attention_mask = mask;
//   torch::Tensor logits = model->forward(in).logits;              // [batch, seq, vocab]
//
// Parameter names are exactly the Hugging Face state-dict keys, so tuners target modules by
// those names (`model.layers.0.self_attn.q_proj`) and checkpoints load without renaming.
#pragma once
#include <torch/types.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "peft/io.h"
#include "peft/error.h"
#include "peft/module.h"

namespace peft {

/// What the model's head computes.
enum class TaskType { CausalLM, SeqCls, Seq2SeqLM, FeatureExtraction };
/// peft's task_type strings: "CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM", "FEATURE_EXTRACTION".
std::string task_type_name(TaskType t);
TaskType task_type_from_name(const std::string& s);

/// Keys and values of self-attention (and, for encoder-decoders, cross-attention) per layer,
/// shaped [batch, n_kv_heads, len, head_dim]. Prefix tuning starts generation from a cache
/// that already holds the prefix; generation appends to it.
struct KVCache {
  std::vector<torch::Tensor> k, v;              // self-attention, one entry per layer (undefined = empty)
  std::vector<torch::Tensor> cross_k, cross_v;  // encoder-decoder cross-attention (computed once)
  // PrefixGate token scores of the cached tokens [B, past], per layer: self and cross attention.
  std::vector<torch::Tensor> gate_scores, cross_gate_scores;
  int64_t length() const { return k.empty() || !k[0].defined() ? 0 : k[0].size(2); }
};

/// Per-layer key/value prefixes [B, heads, P, head_dim] that attention layers put before their
/// own keys/values (prefix tuning on encoder-decoders, Li & Liang 2021 sec. 4.2: the encoder,
/// the decoder and the decoder's cross-attention each get their own). They sit at the P
/// positions before the sequence and are never stored in a KVCache. Empty vector: no prefix.
struct AttentionPrefix {
  std::vector<torch::Tensor> encoder_k, encoder_v;  // encoder self-attention
  std::vector<torch::Tensor> k, v;                  // decoder self-attention
  std::vector<torch::Tensor> cross_k, cross_v;      // decoder cross-attention
};

/// A learned gate on the prefix (UniPELT, Mao et al. 2022, sec. 3.2: P_k, P_v scaled by
/// G_P = sigmoid(W_GP x + b) from the layer input x; the authors' code averages G_P over the
/// sequence). An attention layer with a prefix calls scores(site, layer, x) on its input
/// x [B, T, H] for token scores s [B, T] in (0, 1); query i reads the prefix keys and values
/// scaled by g_i = the mean of s over the input tokens query i attends to: every unpadded token
/// in an encoder (the authors' per-sequence gate), tokens up to i in a causal decoder (no later
/// token reaches query i through the gate). See prefix_gate_of_queries().
struct PrefixGate {
  enum Site { kSelf = 0, kCross = 1, kEncoder = 2 };  // T5: decoder self, cross, encoder self
  int64_t prefix_length = 0;  // KV-cache prefixes: the first prefix_length cached keys
  std::function<torch::Tensor(int site, int64_t layer, const torch::Tensor& x)> scores;
};

struct ModelInput {
  torch::Tensor input_ids;       // [B, T] int64; may be undefined when inputs_embeds is given
  torch::Tensor inputs_embeds;   // [B, T, H] (prompt tuning prepends virtual tokens here)
  torch::Tensor attention_mask;  // [B, past + T] int64, 1 = attend; undefined = all ones
  torch::Tensor token_type_ids;  // BERT-style segment ids (optional)
  torch::Tensor position_ids;    // optional; default arange(past, past + T)
  torch::Tensor decoder_input_ids, decoder_attention_mask, decoder_inputs_embeds;  // encoder-decoders
  torch::Tensor encoder_hidden_states;  // encoder-decoders: reuse an encoder output (generation)
  torch::Tensor labels;          // CausalLM: [B, T] (shifted inside, -100 ignored); SeqCls: [B]
  KVCache* cache = nullptr;      // read and extended in place when non-null
  std::shared_ptr<const AttentionPrefix> prefix;  // models that take prefixes this way (T5)
  std::shared_ptr<const PrefixGate> prefix_gate;  // gates the prefix (KV cache or AttentionPrefix)
  bool output_hidden_states = false;
};

struct ModelOutput {
  torch::Tensor logits;  // [B, T, V] or [B, num_labels]
  torch::Tensor loss;    // scalar when labels were given
  std::vector<torch::Tensor> hidden_states;  // transformers' convention (see fixtures README); decoder's for enc-dec
  torch::Tensor encoder_last_hidden_state;  // encoder-decoders
  std::vector<torch::Tensor> encoder_hidden_states;  // encoder-decoders (output_hidden_states)
};

/// Shape facts tuners need without knowing the family (prefix sizes, prompt dims, layer names).
struct ModelDims {
  int64_t hidden_size = 0, num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0, vocab_size = 0;
  int64_t num_decoder_layers = 0;  // encoder-decoders
};

/// The generic roles of PretrainedModel::roles(), in one place: a family maps each to the suffix
/// (or '^' regex) of its modules, tuners place themselves by role, and a user may write a role in
/// target_modules. A family leaves out the roles it has no module for.
namespace role {
inline constexpr const char* kAttnQ = "attn.q";      // query projection
inline constexpr const char* kAttnK = "attn.k";      // key projection
inline constexpr const char* kAttnV = "attn.v";      // value projection
inline constexpr const char* kAttnQkv = "attn.qkv";  // fused q/k/v projection (GPT-2's c_attn)
inline constexpr const char* kAttnO = "attn.o";      // attention output projection
inline constexpr const char* kMlp = "mlp";           // the whole feed-forward block
inline constexpr const char* kMlpGate = "mlp.gate";  // gated FFNs' gate projection
inline constexpr const char* kMlpUp = "mlp.up";      // FFN input projection
inline constexpr const char* kMlpDown = "mlp.down";  // FFN output projection
inline constexpr const char* kMlpAct = "mlp.act";    // FFN activation (a slot)
inline constexpr const char* kNormAttn = "norm.attn";
inline constexpr const char* kNormMlp = "norm.mlp";
inline constexpr const char* kNormFinal = "norm.final";  // the norm before the head (pre-norm stacks)
inline constexpr const char* kBlockIn = "block.in";      // modules whose input is each block's input (pre-norm)
inline constexpr const char* kBlockOut = "block.out";    // modules whose output is h_0 .. h_L (post-norm)
inline constexpr const char* kHead = "head";             // the task head (LM head, classifier)
}  // namespace role

class PretrainedModel : public Module {
 public:
  /// config.json as read (saved back unchanged, plus any edits, by save_pretrained).
  nlohmann::json config;
  virtual ModelOutput forward(const ModelInput& in) = 0;
  /// Input embeddings of token ids ([B, T] -> [B, T, H]), as the model's forward would compute
  /// them before positions are added (prompt tuning concatenates its vectors to this).
  virtual torch::Tensor embed_tokens(const torch::Tensor& ids) = 0;
  virtual ModelDims dims() const = 0;
  virtual TaskType task() const = 0;
  /// config.json model_type ("llama", "gpt2", "bert", "roberta", "t5").
  virtual std::string model_type() const = 0;
  /// Name of the ModuleList holding the blocks (peft's layers_pattern): "layers", "h", "layer", "block".
  virtual std::string layers_pattern() const = 0;
  /// Generic role → module-name suffix, so tuners need not know the family
  /// (e.g. {"attn.q", "q_proj"}, {"attn.v", "v_proj"}, {"mlp.down", "down_proj"}).
  virtual std::map<std::string, std::string> roles() const = 0;
  /// Names of tensors in a checkpoint that are legitimately absent/ignored (tied heads, buffers).
  virtual bool ignorable_key(const std::string& key) const { return false; }
  /// Called after weights are loaded (tie embeddings, etc.).
  virtual void after_load() {}
  /// Encoder-decoders only: the encoder output for generation.
  virtual bool is_encoder_decoder() const { return false; }

  /// Copies `weights` into the parameters/buffers of the same names, checking every name and
  /// shape. strict: a checkpoint key with no parameter is an error (else ignored).
  void load_weights(const TensorMap& weights, const std::string& source, bool strict = true);
  /// Parameters and persistent buffers by name (the state dict).
  TensorMap state_dict() const;
  /// Writes config.json + model.safetensors (HF layout) into `dir`.
  void save_pretrained(const std::string& dir) const;

  std::string name_or_path;  // where it was loaded from
};
using ModelPtr = std::shared_ptr<PretrainedModel>;

/// Factory: builds an (initialised, not yet loaded) model from config.json.
using ModelFactory = std::function<ModelPtr(const nlohmann::json& config)>;
/// Registers `architecture` (e.g. "LlamaForCausalLM"); `model_type` maps a config without
/// `architectures` (or a task override) to it. Duplicate names are a bug.
bool register_model(const std::string& architecture, const std::string& model_type, TaskType task,
                    ModelFactory factory);
std::vector<std::string> registered_architectures();

struct LoadOptions {
  /// Override the head: e.g. SeqCls on a causal-LM checkpoint (score head created fresh).
  std::optional<TaskType> task;
  int64_t num_labels = 0;  // for SeqCls when the config has none
  torch::Dtype dtype = torch::kFloat32;
  bool load_weights = true;
};

/// Loads a model folder: config.json + model.safetensors (or shards), or a llama2.c checkpoint
/// (a folder or .bin file holding one, converted on the fly). Errors name the file.
ModelPtr load_model(const std::string& path, const LoadOptions& opts = {});
/// Builds a model from a config alone (random init): tests and benchmarks.
ModelPtr create_model(const nlohmann::json& config, const LoadOptions& opts = {});

/// Helpers for family files: typed config access with errors that name the key.
int64_t cfg_int(const nlohmann::json& c, const std::string& key);
int64_t cfg_int(const nlohmann::json& c, const std::string& key, int64_t dflt);
double cfg_double(const nlohmann::json& c, const std::string& key, double dflt);
bool cfg_bool(const nlohmann::json& c, const std::string& key, bool dflt);
std::string cfg_str(const nlohmann::json& c, const std::string& key, const std::string& dflt);

/// The dtype for numerically sensitive steps (norms, softmax, losses): float32 as transformers
/// upcasts half types, but float64 stays float64 (finite-difference gradient checks need it).
inline torch::ScalarType compute_dtype(torch::ScalarType t) { return t == torch::kDouble ? torch::kDouble : torch::kFloat32; }

/// Standard losses shared by families.
/// Causal LM: logits[:, :-1] vs labels[:, 1:], mean over labels != -100.
torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& labels);
/// Additive attention mask [B, 1, Tq, Tk] (0 or dtype min) from a [B, Tk] padding mask,
/// causal over the last Tq keys when `causal` (queries sit at the end of the keys).
torch::Tensor attention_bias(const torch::Tensor& mask, int64_t batch, int64_t tq, int64_t tk, bool causal,
                             torch::Dtype dtype, torch::Device device);

/// The per-query prefix gate g [B, 1, T, 1] of one attention layer (see PrefixGate):
/// s [B, T] the scores of the current tokens; visible [B, 1, T, K] true where query i attends
/// input token k (the `cached` ones first, then the current T); cached [B, past] the scores of
/// earlier tokens, extended in place with s (null: none). Queries that see no token get g = 0.
torch::Tensor prefix_gate_of_queries(const torch::Tensor& s, const torch::Tensor& visible, torch::Tensor* cached);
/// Scales the first P key columns of attention scores or probabilities [B, h, T, K] by g
/// [B, 1, T, 1]: gating scores and probabilities equals scaling the prefix keys and values.
torch::Tensor gate_prefix_columns(const torch::Tensor& t, const torch::Tensor& g, int64_t P);
/// One attention layer's gate: its first P keys are the prefix; of(x) gives g [B, 1, T, 1] from
/// the attention input x. Empty (no `of`) when the input has no PrefixGate.
struct LayerPrefixGate {
  int64_t P = 0;
  std::function<torch::Tensor(const torch::Tensor& x)> of;
};
/// The gate of layer `layer` at `site` (visible, cached: as prefix_gate_of_queries; `cached`
/// must outlive the forward). Empty when gate is null.
LayerPrefixGate layer_prefix_gate(const PrefixGate* gate, int site, int64_t layer, int64_t P, const torch::Tensor& visible,
                                  torch::Tensor* cached);
/// Models whose prefix is the start of the KV cache (Llama, GPT-2, BERT): the gates of their n
/// self-attention layers, given the additive mask `bias` [B, 1, T, past + T] (the first
/// gate->prefix_length keys are the prefix). n empty gates when gate is null.
std::vector<LayerPrefixGate> kv_prefix_gates(const PrefixGate* gate, int64_t n, const torch::Tensor& bias, KVCache* cache);

}  // namespace peft

#define PEFT_MODEL_CAT2(a, b) a##b
#define PEFT_MODEL_CAT(a, b) PEFT_MODEL_CAT2(a, b)
#define PEFT_REGISTER_MODEL(arch, model_type, task, factory) \
  static const bool PEFT_MODEL_CAT(peft_model_reg_, __LINE__) = ::peft::register_model(arch, model_type, task, factory)
