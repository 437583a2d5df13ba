// Soft prompts: input tuners that leave every weight of the model alone.
//
// - Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt
//   Tuning", sec. 2): P trainable embeddings P_e [P, d] are concatenated in front of the token
//   embeddings, [P_e; X_e]; init RANDOM (N(0,1) as nn.Embedding) or TEXT (embeddings of the
//   tokens of a text, repeated/truncated to P).
// - P-tuning (Liu et al. 2021, "GPT Understands, Too", sec. 3.2, eq. h_i = MLP([LSTM(h_0:i),
//   LSTM(h_i:m)])): the virtual tokens are the output of a prompt encoder (peft's MLP with two
//   hidden layers, or a bidirectional LSTM followed by an MLP) applied to trainable embeddings.
//   peft saves only the encoder OUTPUT as `prompt_embeddings`; a loaded adapter is plain
//   prompt tuning.
// - Prefix tuning (Li & Liang 2021, "Prefix-Tuning", sec. 4.2, eq. 3-5): every attention layer
//   attends to P extra key/value vectors, fed as a pre-filled KV cache (prefix keys are not
//   rotated by RoPE, real positions start at P). Optional reparameterisation P = MLP(P')
//   (prefix_projection: Linear, tanh, Linear) during training, saved as its output.
//   P-tuning v2 (Liu et al. 2022, sec. 3.2) is prefix tuning without the reparameterisation.
//   Sized for num_key_value_heads (GQA), as peft does.
//
// peft's conventions: the attention mask is prefixed with ones, BERT token_type_ids with zeros,
// causal-LM labels with -100; position ids are recomputed (real tokens start at P). During
// generation with a KV cache the virtual tokens/prefix enter only when the cache is empty.
// Encoder-decoders: prompt tuning / p-tuning prepend to the encoder input (peft keeps
// num_transformer_submodules = 2 sets of rows; the first P are used). Prefix tuning has two
// layouts, chosen by `"prefix_layout"` (ours, written to peft_cpp_config.json; decoder-only models
// have one layout):
// - "peft" (default): Python peft 0.13.2's, so either side loads the other's folder. The file
//   holds P rows [P, num_layers * 2 * token_dim] (num_layers = the ENCODER depth, token_dim =
//   d_model, num_transformer_submodules = 2). peft's get_prompt duplicates the 2L key/value rows
//   for the two submodules and cuts them into groups of four, so decoder layer l gets the rows
//   (4l + j) mod 2L as (self key, self value, cross key, cross value) of its past_key_values. The
//   model receives them as a pre-filled KVCache (k/v and cross_k/cross_v), which is what
//   transformers does with past_key_values: the encoder gets no prefix; decoder self-attention
//   reads the P keys first (positions 0 .. P-1 of the position bias, visible to every query); the
//   cross rows replace the encoder's keys/values only when the encoder length equals P, else
//   they are recomputed from the encoder output (wave-2 fixtures, README "T5 prefix tuning").
//   A decoder deeper than the encoder is refused (peft would silently skip its last blocks).
// - "paper": Li & Liang 2021, sec. 4.2: separate prefixes for the encoder, the decoder and the
//   decoder's cross-attention: num_transformer_submodules = 3 sets of P rows, rows [0, P) the
//   decoder's self-attention, [P, 2P) its cross-attention, [2P, 3P) the encoder's
//   self-attention, each [P, num_layers * 2 * token_dim] with num_layers the larger stack. The
//   model receives them as ModelInput::prefix (positions 0 .. P-1, never cached), always
//   prepended. Python peft refuses such a file (its shape differs), it does not misread it. A
//   config without the key but with num_transformer_submodules 3 (saved before the option
//   existed) is read in this layout. The hybrids built on prefix tuning (MAM, S4, UniPELT) use it.
// Prefix gate (ours, `"prefix_gate": true`, UniPELT: Mao et al. 2022, sec. 3.2): a gate
// G = sigmoid(W x + b) per attention layer, x the attention's input, that scales what each query
// reads from the prefix keys and values (PrefixGate in include/peft/model.h defines the
// per-query average). Saved as `prefix_gate.weight` [R, hidden] and `prefix_gate.bias` [R], one
// row per attention layer: R = num_layers, or 3 * num_layers for encoder-decoders in the order
// of the prefix rows (decoder self-attention, cross-attention, encoder; the "paper" layout only).
// nn.Linear's init.
// The flag is written to peft_cpp_config.json, not adapter_config.json: Python peft would load
// such a folder as plain prefix tuning without the gate, so ship gated adapters to peft.cpp only.
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/tuner.h"

namespace peft {
namespace {

enum class Kind { Prompt, PTuning, Prefix };

/// Whether an encoder-decoder's prefix uses the paper's three-site layout (see the top).
bool paper_layout(Kind kind, const nlohmann::json& c, bool encdec) {
  if (kind != Kind::Prefix || !encdec) return false;
  if (c.contains("prefix_layout") && c["prefix_layout"].is_string()) return c["prefix_layout"] == "paper";
  return c.contains("num_transformer_submodules") && c["num_transformer_submodules"] == 3;
}

class PromptLearning : public InputAdapter {
 public:
  PromptLearning(Kind kind, const nlohmann::json& c, PretrainedModel& model, bool loading) : kind_(kind) {
    P_ = c["num_virtual_tokens"].get<int64_t>();
    subm_ = c["num_transformer_submodules"].get<int64_t>();
    token_dim_ = c["token_dim"].get<int64_t>();
    layers_ = c["num_layers"].get<int64_t>();
    heads_ = c["num_attention_heads"].get<int64_t>();
    encdec_ = model.is_encoder_decoder();
    paper_ = paper_layout(kind, c, encdec_);
    // peft: P rows of prefix (key/value) vectors; prompt tuning / p-tuning keep P per submodule.
    rows_ = kind == Kind::Prefix && !paper_ ? P_ : P_ * subm_;
    const int64_t rows = rows_;
    const int64_t out_dim = kind == Kind::Prefix ? layers_ * 2 * token_dim_ : token_dim_;
    bool encoder = !loading && ((kind == Kind::PTuning) || (kind == Kind::Prefix && c["prefix_projection"].get<bool>()));
    int64_t in_dim = encoder ? token_dim_ : out_dim;
    torch::Tensor init = torch::randn({rows, in_dim});  // nn.Embedding's N(0, 1)
    if (kind == Kind::Prompt && !loading && c["prompt_tuning_init"].get<std::string>() == "TEXT") {
      auto ids_j = c.value("prompt_tuning_init_token_ids", nlohmann::json());
      PEFT_CHECK(ids_j.is_array() && !ids_j.empty(),
                 "adapter config: prompt_tuning_init TEXT needs 'prompt_tuning_init_token_ids' (the token ids of "
                 "prompt_tuning_init_text; the CLI fills them in from the tokenizer)");
      std::vector<int64_t> ids;
      for (auto& v : ids_j) ids.push_back(v.get<int64_t>());
      std::vector<int64_t> rep;  // repeated / truncated to rows, as peft does
      while ((int64_t)rep.size() < rows) rep.insert(rep.end(), ids.begin(), ids.end());
      rep.resize(rows);
      torch::NoGradGuard ng;
      auto t = torch::tensor(rep, torch::kLong);
      init = model.embed_tokens(t.unsqueeze(0)).squeeze(0).detach().to(torch::kFloat32).clone();
    }
    embedding = register_parameter("embedding", init);
    if (kind == Kind::Prefix && c.value("prefix_gate", false)) {
      const int64_t H = model.dims().hidden_size, rows = subm_ * layers_;
      gate_w_ = register_parameter("prefix_gate_weight", kaiming_uniform({rows, H}, H));
      gate_b_ = register_parameter("prefix_gate_bias", kaiming_uniform({rows}, H));
      gate_ = std::make_shared<PrefixGate>();
      gate_->prefix_length = P_;
      gate_->scores = [this](int site, int64_t layer, const torch::Tensor& x) {
        const int64_t row = (encdec_ ? site : 0) * layers_ + layer;
        auto w = gate_w_[row].to(x.scalar_type()), b = gate_b_[row].to(x.scalar_type());
        return torch::sigmoid(torch::matmul(x, w) + b);  // [B, T]
      };
    }
    if (encoder) {
      int64_t h = c["encoder_hidden_size"].get<int64_t>();
      if (kind == Kind::Prefix) {
        mlp_ = register_module("transform", torch::nn::Sequential(torch::nn::Linear(token_dim_, h), torch::nn::Tanh(),
                                                                  torch::nn::Linear(h, out_dim)));
      } else if (c["encoder_reparameterization_type"].get<std::string>() == "LSTM") {
        int64_t nl = c["encoder_num_layers"].get<int64_t>();
        lstm_ = register_module("lstm_head", torch::nn::LSTM(torch::nn::LSTMOptions(token_dim_, h)
                                                                  .num_layers(nl)
                                                                  .dropout(c["encoder_dropout"].get<double>())
                                                                  .bidirectional(true)
                                                                  .batch_first(true)));
        mlp_ = register_module("mlp_head", torch::nn::Sequential(torch::nn::Linear(2 * h, 2 * h), torch::nn::ReLU(),
                                                                 torch::nn::Linear(2 * h, out_dim)));
      } else {  // peft 0.13's MLP: always two hidden layers
        mlp_ = register_module("mlp_head", torch::nn::Sequential(torch::nn::Linear(token_dim_, h), torch::nn::ReLU(),
                                                                 torch::nn::Linear(h, h), torch::nn::ReLU(),
                                                                 torch::nn::Linear(h, out_dim)));
      }
    }
  }

  /// The virtual tokens [rows, out_dim]: the embeddings, or the encoder's output.
  torch::Tensor prompts() {
    if (!mlp_) return embedding;
    torch::Tensor x = embedding;
    if (lstm_) x = std::get<0>(lstm_->forward(x.unsqueeze(0))).squeeze(0);
    return mlp_->forward(x);
  }

  void apply(PretrainedModel& model, ModelInput& in, KVCache& storage) override {
    if (gate_) in.prefix_gate = gate_;
    if (kind_ == Kind::Prefix && encdec_) return paper_ ? apply_attention_prefix(in) : apply_past_key_values(in, storage);
    if (encdec_ && in.encoder_hidden_states.defined()) {  // the encoder (virtual tokens included) already ran
      const auto& m = in.attention_mask;
      if (m.defined() && m.size(1) + P_ == in.encoder_hidden_states.size(1))
        in.attention_mask = torch::cat({torch::ones({m.size(0), P_}, m.options()), m}, 1);
      return;
    }
    const bool continuing = in.cache && in.cache->length() > 0;  // virtual tokens already cached
    torch::Tensor ref = in.inputs_embeds.defined() ? in.inputs_embeds : in.input_ids;
    PEFT_CHECK(ref.defined(), method(), ": input_ids or inputs_embeds required");
    const int64_t B = ref.size(0);
    auto dev = ref.device();
    if (in.attention_mask.defined())
      in.attention_mask = torch::cat({torch::ones({B, P_}, in.attention_mask.options()), in.attention_mask}, 1);
    if (kind_ == Kind::Prefix) {
      if (continuing) return;
      KVCache* cache = in.cache ? in.cache : &storage;
      const int64_t hd = token_dim_ / heads_;
      // [P, L*2*token_dim] -> [L*2, heads, P, head_dim]; layer l: key = 2l, value = 2l + 1.
      auto pkv = prompts().view({P_, layers_ * 2, heads_, hd}).permute({1, 2, 0, 3}).to(dev);
      cache->k.resize(layers_);
      cache->v.resize(layers_);
      for (int64_t l = 0; l < layers_; ++l) {
        cache->k[l] = pkv[2 * l].unsqueeze(0).expand({B, heads_, P_, hd});
        cache->v[l] = pkv[2 * l + 1].unsqueeze(0).expand({B, heads_, P_, hd});
      }
      in.cache = cache;
      return;
    }
    if (continuing) return;
    torch::Tensor x = in.inputs_embeds.defined() ? in.inputs_embeds : model.embed_tokens(in.input_ids);
    auto pr = prompts().slice(0, 0, P_).to(x.device(), x.scalar_type());
    in.inputs_embeds = torch::cat({pr.unsqueeze(0).expand({B, P_, pr.size(1)}), x}, 1);
    in.input_ids = torch::Tensor();
    in.position_ids = torch::Tensor();  // peft drops them: real tokens sit at P..
    if (in.token_type_ids.defined())
      in.token_type_ids = torch::cat({torch::zeros({B, P_}, in.token_type_ids.options()), in.token_type_ids}, 1);
    if (in.labels.defined() && model.task() == TaskType::CausalLM)
      in.labels = torch::cat({torch::full({B, P_}, -100, in.labels.options()), in.labels}, 1);
  }

  // Encoder-decoders, peft's layout: the prefix is the decoder's past_key_values (a KV cache that
  // starts with it: self and cross entries per layer), built when the cache is empty.
  void apply_past_key_values(ModelInput& in, KVCache& storage) {
    if (in.decoder_attention_mask.defined()) {  // peft prefixes the decoder mask with ones
      const auto& m = in.decoder_attention_mask;
      in.decoder_attention_mask = torch::cat({torch::ones({m.size(0), P_}, m.options()), m}, 1);
    }
    if (in.cache && in.cache->length() > 0) return;  // the prefix is already cached
    torch::Tensor ref;
    for (auto* t : {&in.decoder_input_ids, &in.decoder_inputs_embeds, &in.labels, &in.input_ids, &in.inputs_embeds,
                    &in.encoder_hidden_states})
      if (!ref.defined() && t->defined()) ref = *t;
    PEFT_CHECK(ref.defined(), method(), ": the input has no batch (decoder_input_ids, labels or input_ids)");
    const int64_t B = ref.size(0), hd = token_dim_ / heads_, two_l = 2 * layers_;
    // [P, 2L*token_dim] -> [2L, heads, P, head_dim]; peft duplicates the 2L rows (two submodules)
    // and gives layer l the four rows 4l .. 4l+3 of the doubled list: (4l + j) mod 2L.
    auto pkv = prompts().view({P_, two_l, heads_, hd}).permute({1, 2, 0, 3}).to(ref.device());
    KVCache* cache = in.cache ? in.cache : &storage;
    for (auto* v : {&cache->k, &cache->v, &cache->cross_k, &cache->cross_v}) v->assign(layers_, torch::Tensor());
    auto row = [&](int64_t l, int64_t j) { return pkv[(4 * l + j) % two_l].unsqueeze(0).expand({B, heads_, P_, hd}); };
    for (int64_t l = 0; l < layers_; ++l) {
      cache->k[l] = row(l, 0);
      cache->v[l] = row(l, 1);
      cache->cross_k[l] = row(l, 2);
      cache->cross_v[l] = row(l, 3);
    }
    in.cache = cache;
  }

  // Encoder-decoders, the paper's layout: every forward gets the three prefixes (not cached).
  void apply_attention_prefix(ModelInput& in) {
    torch::Tensor ref;
    for (auto* t : {&in.input_ids, &in.inputs_embeds, &in.encoder_hidden_states, &in.decoder_input_ids, &in.labels})
      if (!ref.defined() && t->defined()) ref = *t;
    PEFT_CHECK(ref.defined(), method(), ": the input has no batch (input_ids, encoder_hidden_states or labels)");
    const int64_t B = ref.size(0), hd = token_dim_ / heads_;
    // [3P, L*2*token_dim] -> [site, L*2, heads, P, head_dim]; layer l: key = 2l, value = 2l + 1.
    auto all = prompts().view({3, P_, layers_ * 2, heads_, hd}).permute({0, 2, 3, 1, 4}).to(ref.device());
    auto pre = std::make_shared<AttentionPrefix>();
    auto fill = [&](int64_t site, std::vector<torch::Tensor>& k, std::vector<torch::Tensor>& v) {
      for (int64_t l = 0; l < layers_; ++l) {
        k.push_back(all[site][2 * l].unsqueeze(0).expand({B, heads_, P_, hd}));
        v.push_back(all[site][2 * l + 1].unsqueeze(0).expand({B, heads_, P_, hd}));
      }
    };
    fill(0, pre->k, pre->v);
    fill(1, pre->cross_k, pre->cross_v);
    fill(2, pre->encoder_k, pre->encoder_v);
    in.prefix = pre;
  }

  TensorMap saved_tensors() const override {
    torch::NoGradGuard ng;
    auto* self = const_cast<PromptLearning*>(this);
    TensorMap t{{"prompt_embeddings", self->prompts().detach().clone()}};
    if (gate_) {
      t["prefix_gate.weight"] = gate_w_.detach().clone();
      t["prefix_gate.bias"] = gate_b_.detach().clone();
    }
    return t;
  }

  void load_saved(const TensorMap& t, const std::string& source) override {
    auto it = t.find("prompt_embeddings");
    PEFT_CHECK(it != t.end(), source, ": tensor 'prompt_embeddings' is missing");
    const int64_t out_dim = kind_ == Kind::Prefix ? layers_ * 2 * token_dim_ : token_dim_;
    PEFT_CHECK(it->second.dim() == 2 && it->second.size(0) == rows_ && it->second.size(1) == out_dim, source,
               ": tensor 'prompt_embeddings' has shape ", it->second.sizes(), " but the config asks for [", rows_, ", ",
               out_dim, "]", paper_ ? " (prefix_layout \"paper\")" : "");
    torch::NoGradGuard ng;
    if (mlp_) {  // the saved tensor is the encoder output: drop the encoder
      if (lstm_) unregister_module("lstm_head");
      unregister_module(kind_ == Kind::Prefix ? "transform" : "mlp_head");
      mlp_ = nullptr;
      lstm_ = nullptr;
    }
    embedding.set_data(it->second.to(embedding.device(), embedding.scalar_type()).clone());
    if (!gate_) return;  // gate tensors without the flag: refused by load_adapter_state_dict (no counterpart)
    for (auto [key, param] : {std::pair<const char*, torch::Tensor*>{"prefix_gate.weight", &gate_w_},
                              std::pair<const char*, torch::Tensor*>{"prefix_gate.bias", &gate_b_}}) {
      auto g = t.find(key);
      PEFT_CHECK(g != t.end(), source, ": tensor '", key, "' is missing (the config has \"prefix_gate\": true)");
      PEFT_CHECK(g->second.sizes() == param->sizes(), source, ": tensor '", key, "' has shape ", g->second.sizes(),
                 " but the model needs ", param->sizes());
      param->set_data(g->second.to(param->device(), param->scalar_type()).clone());
    }
  }

  std::string method() const override {
    return kind_ == Kind::Prompt ? "prompt_tuning" : kind_ == Kind::PTuning ? "p_tuning" : "prefix_tuning";
  }
  bool has_encoder() const { return static_cast<bool>(mlp_); }

  // Mixed-adapter batches (tuners/row_prompts.h): the virtual tokens [P, token_dim], or the
  // prefix's keys and values per layer [kv_heads, P, head_dim], of one row. A gated prefix reads
  // every query's gate, which rows without it would not have: refused.
  bool supports_row_adapters() const override { return !gate_; }
  std::optional<RowPrompt> row_prompt() override {
    if (gate_) return std::nullopt;
    RowPrompt p;
    if (kind_ != Kind::Prefix) {
      p.embeds = prompts().slice(0, 0, P_);
      return p;
    }
    if (encdec_) return std::nullopt;
    auto pkv = prompts().view({P_, layers_ * 2, heads_, token_dim_ / heads_}).permute({1, 2, 0, 3});
    for (int64_t l = 0; l < layers_; ++l) {
      p.k.push_back(pkv[2 * l]);
      p.v.push_back(pkv[2 * l + 1]);
    }
    return p;
  }

  torch::Tensor embedding;

 private:
  Kind kind_;
  int64_t P_, subm_, token_dim_, layers_, heads_, rows_;
  bool encdec_ = false, paper_ = false;
  torch::nn::Sequential mlp_{nullptr};
  torch::nn::LSTM lstm_{nullptr};
  torch::Tensor gate_w_, gate_b_;  // prefix gate (defined when "prefix_gate": true)
  std::shared_ptr<PrefixGate> gate_;
};

class PromptLearningTuner : public Tuner {
 public:
  explicit PromptLearningTuner(Kind k) : kind_(k) {}
  std::string peft_type() const override {
    return kind_ == Kind::Prompt ? "PROMPT_TUNING" : kind_ == Kind::PTuning ? "P_TUNING" : "PREFIX_TUNING";
  }
  bool targets_modules() const override { return false; }
  // peft 0.13's PromptTuningConfig / PromptEncoderConfig / PrefixTuningConfig (a
  // PromptLearningConfig each), then our extension fields.
  std::vector<ConfigField> fields() const override {
    using T = FieldType;
    std::vector<ConfigField> f = {
        ConfigField{"num_virtual_tokens", T::Int, nullptr, "virtual tokens (or prefix positions); required"}.at_least(1),
        ConfigField{"token_dim", T::Int, nullptr, "their width; null: from the model"}.at_least(1).or_null(),
        ConfigField{"num_transformer_submodules", T::Int, nullptr, "1 (decoder), 2 (encoder-decoder); null: from the model"}
            .at_least(1)
            .or_null(),
        ConfigField{"num_attention_heads", T::Int, nullptr, "null: from the model"}.at_least(1).or_null(),
        ConfigField{"num_layers", T::Int, nullptr, "null: from the model"}.at_least(1).or_null(),
    };
    if (kind_ == Kind::Prompt) {
      f.push_back(ConfigField{"prompt_tuning_init", T::String, "RANDOM", "RANDOM: N(0, 1); TEXT: the embeddings of the init text"}
                      .one_of({"RANDOM", "TEXT"}));
      f.push_back(ConfigField{"prompt_tuning_init_text", T::String, nullptr, "the text for TEXT init"}.or_null());
      f.push_back(ConfigField{"tokenizer_name_or_path", T::String, nullptr, "peft's tokenizer for the text (informational)"}.or_null());
      f.push_back(ConfigField{"tokenizer_kwargs", T::Object, nullptr, "peft's tokenizer arguments (informational)"}.or_null());
      f.push_back(ConfigField{"prompt_tuning_init_token_ids", T::Ints, nullptr,
                              "the init text's token ids (peft train fills them in from the run's tokenizer)"}
                      .or_null()
                      .extension());
    } else if (kind_ == Kind::PTuning) {
      f.push_back(ConfigField{"encoder_reparameterization_type", T::String, "MLP", "the prompt encoder"}.one_of({"MLP", "LSTM"}));
      f.push_back(ConfigField{"encoder_hidden_size", T::Int, nullptr, "its hidden width; null: token_dim"}.at_least(1).or_null());
      f.push_back(ConfigField{"encoder_num_layers", T::Int, 2, "LSTM layers"}.at_least(1));
      f.push_back(ConfigField{"encoder_dropout", T::Number, 0.0, "the LSTM's dropout"}.in_closed_range(0, 1));
    } else {
      f.push_back(ConfigField{"encoder_hidden_size", T::Int, nullptr, "the projection's hidden width; null: token_dim"}
                      .at_least(1)
                      .or_null());
      f.push_back(ConfigField{"prefix_projection", T::Bool, false, "reparameterise the prefix through a 2-layer MLP"});
      f.push_back(ConfigField{"prefix_gate", T::Bool, false, "a learned gate per prefixed attention (UniPELT)"}.extension());
      f.push_back(ConfigField{"prefix_layout", T::String, "peft",
                              "encoder-decoders: \"peft\" (decoder past_key_values) or \"paper\" (every attention)"}
                      .one_of({"peft", "paper"})
                      .extension());
    }
    return with_common(std::move(f), {"base_model_name_or_path", "revision", "task_type", "inference_mode", "auto_mapping"});
  }
  /// TEXT init: the tuner has no tokenizer, so the run's fills in the ids (special tokens added,
  /// as peft's tokenizer(prompt_tuning_init_text) call adds them).
  void prepare_training_config(nlohmann::json& c, const TrainingSetup& setup) const override {
    if (kind_ != Kind::Prompt || !setup.encode || c.contains("prompt_tuning_init_token_ids")) return;
    if (c.value("prompt_tuning_init", std::string()) == "TEXT" && c.value("prompt_tuning_init_text", nlohmann::json()).is_string())
      c["prompt_tuning_init_token_ids"] = setup.encode(c["prompt_tuning_init_text"].get<std::string>());
  }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json&) const override {
    auto& c = pm.mutable_config(name);
    auto& model = *pm.model;
    auto d = model.dims();
    const bool encdec = model.is_encoder_decoder();
    int64_t heads = d.num_heads, token_dim = d.hidden_size;
    if (kind_ == Kind::Prefix) {  // peft sizes the prefix for the key/value heads (GQA)
      int64_t kv = d.num_kv_heads > 0 ? d.num_kv_heads : d.num_heads;
      token_dim = d.hidden_size / d.num_heads * kv;
      if (d.head_dim > 0) token_dim = d.head_dim * kv;
      heads = kv;
    }
    auto fill = [&](const char* f, int64_t v) {
      if (c[f].is_null()) c[f] = v;
      PEFT_CHECK(c[f].get<int64_t>() == v, "adapter config: field '", f, "' is ", c[f].dump(), " but the model needs ", v);
    };
    const bool attention_prefix = paper_layout(kind_, c, encdec);  // three prefixes (see the top)
    if (encdec && kind_ == Kind::Prefix && !attention_prefix) {  // peft's layout
      PEFT_CHECK(token_dim == d.hidden_size, "adapter config: prefix tuning in peft's layout sizes the prefix with "
                 "token_dim = hidden size (", d.hidden_size, ") but the attention has ", d.num_heads, " heads x ",
                 d.head_dim, "; set \"prefix_layout\": \"paper\"");
      PEFT_CHECK(d.num_decoder_layers <= d.num_layers, "adapter config: prefix tuning in peft's layout gives ",
                 d.num_layers, " layers of prefix (the encoder depth) to a decoder of ", d.num_decoder_layers,
                 " (peft would skip the decoder's last blocks); set \"prefix_layout\": \"paper\"");
      PEFT_CHECK(!c.value("prefix_gate", false), "adapter config: 'prefix_gate' on an encoder-decoder needs "
                 "\"prefix_layout\": \"paper\" (the gate has a row per prefixed attention site)");
    }
    fill("num_layers", attention_prefix ? std::max(d.num_layers, d.num_decoder_layers) : d.num_layers);
    fill("token_dim", token_dim);
    fill("num_attention_heads", heads);
    fill("num_transformer_submodules", attention_prefix ? 3 : encdec ? 2 : 1);
    if (kind_ != Kind::Prompt && c["encoder_hidden_size"].is_null()) c["encoder_hidden_size"] = token_dim;
    pm.set_input_adapter(name, std::make_shared<PromptLearning>(kind_, c, model, pm.loading()));
  }

 private:
  Kind kind_;
};

struct PromptTuner : PromptLearningTuner {
  PromptTuner() : PromptLearningTuner(Kind::Prompt) {}
};
struct PTuningTuner : PromptLearningTuner {
  PTuningTuner() : PromptLearningTuner(Kind::PTuning) {}
};
struct PrefixTuner : PromptLearningTuner {
  PrefixTuner() : PromptLearningTuner(Kind::Prefix) {}
};

PEFT_REGISTER_TUNER(PromptTuner);
PEFT_REGISTER_TUNER(PTuningTuner);
PEFT_REGISTER_TUNER(PrefixTuner);
PEFT_REGISTER_METHOD("prompt-tuning", {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 8}});
PEFT_REGISTER_METHOD("p-tuning", {{"peft_type", "P_TUNING"}, {"num_virtual_tokens", 8}, {"encoder_hidden_size", 64}});
PEFT_REGISTER_METHOD("prefix-tuning", {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 8}, {"prefix_projection", true}});
PEFT_REGISTER_METHOD("p-tuning-v2", {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 8}, {"prefix_projection", false}});

}  // namespace
}  // namespace peft
