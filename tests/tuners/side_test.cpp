// Ladder side-tuning: identity at init, closed-form parameter count, placement through the
// roles ("block.in" / "norm.final" on pre-norm stacks: Llama, GPT-2, T5's decoder; "block.out"
// on post-norm BERT / RoBERTa), bit-exact save/load, no merge, float64 finite-difference
// gradients; and the point of the method: a training step leaves the backbone out of autograd
// (no gradient reaches a base parameter, the backbone's hidden states do not require grad, so
// none of its activations are kept for backward), unlike LoRA on the same model. On T5, cached
// greedy decoding (the decoder one token at a time) equals uncached decoding; on BERT/RoBERTa the
// adapted last hidden state equals a reference side network over the base's hidden states.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/generate.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using namespace peft::test;

struct LstCase {
  std::string name, model;
  nlohmann::json options;
  int64_t side_dim;
  std::vector<std::string> targeted;
};

// L layers, hidden d, side width s (FFN 4 s): L+1 down-projections, L gates, L side blocks
// (LayerNorm, two Linears), the side's final LayerNorm and the up-projection.
int64_t lst_params(int64_t L, int64_t d, int64_t s) {
  const int64_t f = 4 * s;
  return (L + 1) * (s * d + s) + L + L * 2 * s + L * (f * s + f) + L * (s * f + s) + 2 * s + (d * s + d);
}

std::vector<LstCase> lst_cases() {
  // Fixtures: hidden 64, 2 layers.
  return {
      {"llama", "llama", nlohmann::json::object(), 64 / 8,
       {"model.layers.0.input_layernorm", "model.layers.1.input_layernorm", "model.norm"}},
      {"llama_r4", "llama", {{"reduction_factor", 4}}, 64 / 4,
       {"model.layers.0.input_layernorm", "model.layers.1.input_layernorm", "model.norm"}},
      {"gpt2_dim5", "gpt2", {{"side_dim", 5}}, 5, {"transformer.h.0.ln_1", "transformer.h.1.ln_1", "transformer.ln_f"}},
      // Post-norm: the embeddings' LayerNorm and each block's FFN LayerNorm (not the attention's);
      // the side output is added to the last one's output. The classifier stays frozen
      // (modules_to_save is null in LST's config, so nothing is added to the count).
      {"bert_cls", "bert_cls", nlohmann::json::object(), 64 / 8,
       {"bert.embeddings.LayerNorm", "bert.encoder.layer.0.output.LayerNorm", "bert.encoder.layer.1.output.LayerNorm"}},
      {"roberta_cls_dim6", "roberta_cls", {{"side_dim", 6}}, 6,
       {"roberta.embeddings.LayerNorm", "roberta.encoder.layer.0.output.LayerNorm",
        "roberta.encoder.layer.1.output.LayerNorm"}},
      // T5: the decoder only (each block's first layer_norm, the final norm); no encoder module.
      {"t5", "t5", nlohmann::json::object(), 64 / 8,
       {"decoder.block.0.layer.0.layer_norm", "decoder.block.1.layer.0.layer_norm", "decoder.final_layer_norm"}},
      {"t5_v1_1_r4", "t5_v1_1", {{"reduction_factor", 4}}, 64 / 4,
       {"decoder.block.0.layer.0.layer_norm", "decoder.block.1.layer.0.layer_norm", "decoder.final_layer_norm"}},
  };
}

class Lst : public ::testing::TestWithParam<LstCase> {};

TEST_P(Lst, IdentityAtInitCountAndPlacement) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model);
  auto in = fixture_input(c.model);
  auto base = logits_of(*pm, in);
  pm->add_adapter("default", method_config("lst", c.options));
  auto rep = pm->trainable_report();
  EXPECT_EQ(rep.trainable, lst_params(2, 64, c.side_dim)) << rep.to_string();
  EXPECT_EQ(rep.by_method["lst"], rep.trainable);
  expect_targeted(*pm, c.targeted);
  expect_identity_at_init(*pm, in, base, /*mergeable=*/false);  // a side network: nothing to fold
}

TEST_P(Lst, SaveLoadBitExact) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model);
  pm->add_adapter("default", method_config("lst", c.options));
  randomize(*pm, 0.3);
  auto dir = expect_save_load_bit_exact(*pm, c.model, fixture_input(c.model), "lst_" + c.name);
  auto cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "LST");
  EXPECT_EQ(cfg["peft_cpp_format_version"], 1);
  auto saved = load_safetensors(dir + "/adapter_model.safetensors");
  const std::string K = "base_model.model." + c.targeted.back();
  EXPECT_EQ(saved.at(K + ".lst_down.weight").sizes(), torch::IntArrayRef({3, c.side_dim, 64}));
  EXPECT_EQ(saved.at(K + ".lst_up.weight").sizes(), torch::IntArrayRef({64, c.side_dim}));
}

TEST_P(Lst, GradientsMatchFiniteDifferences) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model, torch::kFloat64);
  pm->add_adapter("default", method_config("lst", c.options));
  pm->to(torch::kFloat64);
  randomize(*pm, 0.3);
  expect_gradients_match_finite_differences(*pm, fixture_input(c.model), c.name);
}

INSTANTIATE_TEST_SUITE_P(All, Lst, ::testing::ValuesIn(lst_cases()), [](const auto& info) { return info.param.name; });

namespace {
struct StepFacts {
  bool any_base_grad = false, any_hidden_requires_grad = false, all_adapter_grads = true;
};
// One training forward + backward; which tensors autograd touched.
StepFacts train_step(const std::string& model, const std::string& method, const nlohmann::json& opts) {
  auto pm = fixture_peft_model(model);
  pm->add_adapter("default", method_config(method, opts));
  randomize(*pm, 0.3);  // non-zero up-projections, so every adapter tensor gets a gradient
  pm->train();
  auto in = fixture_input(model);
  in.output_hidden_states = true;
  auto out = pm->forward(in);
  EXPECT_TRUE(out.loss.defined()) << model;
  StepFacts f;
  // hidden_states[0 .. L-1]: the states before the last one, the only one the side output is
  // added to (pre-norm: the final norm's output; BERT: the last block's output).
  EXPECT_GE(out.hidden_states.size(), 3u) << model;
  for (size_t i = 0; i + 1 < out.hidden_states.size(); ++i)
    f.any_hidden_requires_grad |= out.hidden_states[i].requires_grad();
  for (auto& h : out.encoder_hidden_states) f.any_hidden_requires_grad |= h.requires_grad();  // T5's encoder
  out.loss.backward();
  for (auto& p : pm->model->named_parameters())
    if (p.key().find("lst_") == std::string::npos && p.key().find("lora_") == std::string::npos)
      f.any_base_grad |= p.value().grad().defined();
  for (auto& t : pm->trainable_parameters()) f.all_adapter_grads &= t.grad().defined() && t.grad().abs().sum().item<double>() > 0;
  return f;
}
}  // namespace

class LstMemory : public ::testing::TestWithParam<std::string> {};

TEST_P(LstMemory, NoGradientOrActivationsThroughTheBackbone) {
  const auto model = GetParam();
  auto lst = train_step(model, "lst", nlohmann::json::object());
  EXPECT_TRUE(lst.all_adapter_grads);
  EXPECT_FALSE(lst.any_base_grad);
  EXPECT_FALSE(lst.any_hidden_requires_grad);  // the backbone's graph is never recorded
  // The same check on LoRA sees the backbone in the graph: the test can tell the two apart.
  auto lora = train_step(model, "lora", {{"r", 4}, {"target_modules", {"attn.o"}}});  // a role every family has
  EXPECT_TRUE(lora.all_adapter_grads);
  EXPECT_FALSE(lora.any_base_grad);
  EXPECT_TRUE(lora.any_hidden_requires_grad);
}

INSTANTIATE_TEST_SUITE_P(All, LstMemory, ::testing::Values("llama", "gpt2", "bert_cls", "roberta_cls", "t5", "t5_v1_1"),
                         [](const auto& info) { return info.param; });

// T5: the decoder is called one token at a time with the KV cache (the encoder once), so the taps
// hold [B, 1, d] states; the per-token side network must give the logits of the whole-sequence
// forward, and cached greedy decoding the argmax of uncached forwards.
class LstT5 : public ::testing::TestWithParam<std::string> {};

TEST_P(LstT5, CachedDecodingEqualsUncached) {
  const auto model = GetParam();
  auto pm = fixture_peft_model(model);
  auto in = fixture_input(model);
  auto base = logits_of(*pm, in);
  pm->add_adapter("default", method_config("lst"));
  randomize(*pm, 0.3);
  ASSERT_GT(max_diff(logits_of(*pm, in), base), 1e-3);  // the side network acts
  torch::NoGradGuard ng;
  const auto d = pm->model->dims();
  GenerateOptions o;
  o.max_new_tokens = 5;
  o.eos_token_id = d.vocab_size + 1;  // never produced: every row runs the full length
  auto r = generate_seq2seq(*pm->model, in.input_ids, in.attention_mask, o,
                            [&](const ModelInput& x) { return pm->forward(x); });
  ASSERT_EQ(r.sequences.size(1), 1 + o.max_new_tokens);
  ModelInput full;
  full.input_ids = in.input_ids;
  full.attention_mask = in.attention_mask;
  full.decoder_input_ids = r.sequences;
  auto whole = pm->forward(full);
  for (int64_t j = 0; j < o.max_new_tokens; ++j)
    EXPECT_TRUE(torch::equal(whole.logits.select(1, j).argmax(-1), r.sequences.select(1, j + 1))) << "step " << j;
  // Step by step with the cache: the same logits as the whole-sequence forward.
  KVCache cache;
  for (int64_t j = 0; j < r.sequences.size(1); ++j) {
    ModelInput step;
    step.encoder_hidden_states = whole.encoder_last_hidden_state;
    step.attention_mask = in.attention_mask;
    step.decoder_input_ids = r.sequences.slice(1, j, j + 1);
    step.cache = &cache;
    auto logits = pm->forward(step).logits;
    ASSERT_EQ(logits.size(1), 1);
    EXPECT_LT(max_diff(logits.select(1, 0), whole.logits.select(1, j)), 1e-4) << "step " << j;
  }
}

INSTANTIATE_TEST_SUITE_P(All, LstT5, ::testing::Values("t5", "t5_v1_1"), [](const auto& info) { return info.param; });

// The side network has one layer per DECODER block: a T5 with 2 encoder and 3 decoder blocks.
TEST(LstT5Layers, CountsDecoderBlocks) {
  auto cfg = read_json(source_path("tests/fixtures/hf/models/t5/config.json"));
  cfg["num_layers"] = 2;
  cfg["num_decoder_layers"] = 3;
  auto m = create_model(cfg);
  m->eval();
  auto pm = std::make_shared<PeftModel>(m);
  pm->add_adapter("default", method_config("lst"));
  EXPECT_EQ(pm->trainable_report().trainable, lst_params(3, 64, 8));
  expect_targeted(*pm, {"decoder.block.0.layer.0.layer_norm", "decoder.block.1.layer.0.layer_norm",
                        "decoder.block.2.layer.0.layer_norm", "decoder.final_layer_norm"});
  auto in = fixture_input("t5");
  randomize(*pm, 0.3);
  EXPECT_TRUE(torch::isfinite(logits_of(*pm, in)).all().item<bool>());
}

// Post-norm placement against a reference side network written from the file comment's
// equations: h_0 .. h_L are the base encoder's hidden states (embeddings' LayerNorm output, each
// block's output), and the adapted last hidden state is h_L + U LN(s_L); the states before it
// are the base's.
class LstPostNorm : public ::testing::TestWithParam<std::string> {};

TEST_P(LstPostNorm, MatchesReferenceSideNetwork) {
  namespace F = torch::nn::functional;
  const auto model = GetParam();
  auto pm = fixture_peft_model(model, torch::kFloat64);
  pm->add_adapter("default", method_config("lst", {{"side_dim", 6}, {"gate_temperature", 0.5}}));
  pm->to(torch::kFloat64);
  randomize(*pm, 0.3);
  auto in = fixture_input(model);
  in.output_hidden_states = true;
  torch::NoGradGuard ng;
  pm->disable_adapters();
  auto h = pm->forward(in).hidden_states;
  pm->disable_adapters(false);
  auto out = pm->forward(in).hidden_states;
  const int64_t L = 2;
  ASSERT_EQ(h.size(), size_t(L + 1));
  ASSERT_EQ(out.size(), h.size());
  auto sd = pm->adapter_state_dict("default");
  const std::string K = "base_model.model." + pm->adapter("default").targeted.back() + ".";
  ASSERT_EQ(K, "base_model.model." + model.substr(0, model.find('_')) + ".encoder.layer.1.output.LayerNorm.");
  auto t = [&](const std::string& k) { return sd.at(K + k); };
  auto s = F::linear(h[0], t("lst_down.weight")[0], t("lst_down.bias")[0]);
  for (int64_t i = 1; i <= L; ++i) {
    auto mu = torch::sigmoid(t("lst_gate")[i - 1] / 0.5);
    auto z = mu * s + (1 - mu) * F::linear(h[i], t("lst_down.weight")[i], t("lst_down.bias")[i]);
    auto u = torch::layer_norm(z, {6}, t("lst_ln.weight")[i - 1], t("lst_ln.bias")[i - 1], 1e-5);
    s = z + F::linear(torch::gelu(F::linear(u, t("lst_fc1.weight")[i - 1], t("lst_fc1.bias")[i - 1])),
                      t("lst_fc2.weight")[i - 1], t("lst_fc2.bias")[i - 1]);
  }
  s = torch::layer_norm(s, {6}, t("lst_norm.weight"), t("lst_norm.bias"), 1e-5);
  auto want = h[L] + F::linear(s, t("lst_up.weight"), t("lst_up.bias"));
  for (int64_t i = 0; i < L; ++i) EXPECT_TRUE(torch::equal(out[i], h[i])) << i;
  EXPECT_GT(max_diff(want, h[L]), 1e-2);
  EXPECT_LT(max_diff(out[L], want), 1e-10);
}

INSTANTIATE_TEST_SUITE_P(All, LstPostNorm, ::testing::Values("bert_cls", "roberta_cls"),
                         [](const auto& info) { return info.param; });

// A bare BertModel (no "bert." prefix, no head): the side output is added to last_hidden_state.
TEST(LstRoles, BareBertModel) {
  auto cfg = read_json(source_path("tests/fixtures/hf/models/bert_cls/config.json"));
  cfg["architectures"] = {"BertModel"};
  auto m = create_model(cfg);
  m->eval();
  auto pm = std::make_shared<PeftModel>(m);
  auto in = fixture_input("bert_cls");
  in.labels = torch::Tensor();
  auto base = logits_of(*pm, in);
  pm->add_adapter("default", method_config("lst"));
  expect_targeted(*pm, {"embeddings.LayerNorm", "encoder.layer.0.output.LayerNorm", "encoder.layer.1.output.LayerNorm"});
  EXPECT_EQ(pm->trainable_report().trainable, lst_params(2, 64, 8));
  expect_identity_at_init(*pm, in, base, /*mergeable=*/false);
}

// Role values that are regexes ('^...') work as role names in any method's target_modules, alone
// or mixed with suffixes (one alternation regex).
TEST(LstRoles, RegexRolesInTargetModules) {
  auto targeted = [](const std::string& model, const nlohmann::json& tm) {
    auto pm = fixture_peft_model(model);
    pm->add_adapter("default", method_config("ln-tuning", {{"target_modules", tm}}));
    auto got = pm->adapter("default").targeted;
    std::sort(got.begin(), got.end());
    return got;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(targeted("t5", {"block.in"}), (V{"decoder.block.0.layer.0.layer_norm", "decoder.block.1.layer.0.layer_norm"}));
  EXPECT_EQ(targeted("t5", {"block.in", "final_layer_norm"}),
            (V{"decoder.block.0.layer.0.layer_norm", "decoder.block.1.layer.0.layer_norm", "decoder.final_layer_norm",
               "encoder.final_layer_norm"}));
  EXPECT_EQ(targeted("bert_cls", {"block.out"}),
            (V{"bert.embeddings.LayerNorm", "bert.encoder.layer.0.output.LayerNorm", "bert.encoder.layer.1.output.LayerNorm"}));
}

namespace {
// A model with two LayerNorm slots (ln_a, ln_b) and the roles a test gives it.
class RoleToy : public PretrainedModel {
 public:
  std::map<std::string, std::string> r;
  LayerPtr ln_a, ln_b;
  explicit RoleToy(std::map<std::string, std::string> roles) : r(std::move(roles)) {
    register_slot("ln_a", ln_a, std::make_shared<LayerNorm>(4, 1e-5));
    register_slot("ln_b", ln_b, std::make_shared<LayerNorm>(4, 1e-5));
  }
  ModelOutput forward(const ModelInput&) override { return {}; }
  torch::Tensor embed_tokens(const torch::Tensor&) override { return {}; }
  ModelDims dims() const override {
    ModelDims d;
    d.hidden_size = 4;
    d.num_layers = 1;
    return d;
  }
  TaskType task() const override { return TaskType::CausalLM; }
  std::string model_type() const override { return "toy"; }
  std::string layers_pattern() const override { return "layers"; }
  std::map<std::string, std::string> roles() const override { return r; }
};
}  // namespace

TEST(LstErrors, ClearMessages) {
  auto message = [](const std::string& model, const nlohmann::json& opts) {
    auto pm = fixture_peft_model(model);
    return error_of([&] { pm->add_adapter("x", method_config("lst", opts)); });
  };
  EXPECT_NE(message("llama", {{"reduction_factor", 0}}).find("'reduction_factor'"), std::string::npos);
  EXPECT_NE(message("llama", {{"side_dim", 2.5}}).find("'side_dim'"), std::string::npos);
  EXPECT_NE(message("llama", {{"gate_temperature", -1}}).find("'gate_temperature'"), std::string::npos);
  EXPECT_NE(message("llama", {{"target_modules", {"q_proj"}}}).find("'target_modules'"), std::string::npos);
  // Roles that are missing or select the wrong number of modules are named.
  auto on_toy = [](std::map<std::string, std::string> roles) {
    auto pm = std::make_shared<PeftModel>(std::make_shared<RoleToy>(std::move(roles)));
    return error_of([&] { pm->add_adapter("x", method_config("lst")); });
  };
  auto none = on_toy({});
  EXPECT_NE(none.find("'block.in'"), std::string::npos) << none;
  EXPECT_NE(none.find("'block.out'"), std::string::npos) << none;
  auto one_out = on_toy({{"block.out", "ln_a"}});
  EXPECT_NE(one_out.find("'block.out'"), std::string::npos) << one_out;
  EXPECT_NE(one_out.find("selects 1 modules"), std::string::npos) << one_out;
  auto two_final = on_toy({{"block.in", "ln_a"}, {"norm.final", "^ln_.*"}});
  EXPECT_NE(two_final.find("'norm.final'"), std::string::npos) << two_final;
  EXPECT_NE(two_final.find("selects 2 modules"), std::string::npos) << two_final;
  auto no_block = on_toy({{"block.in", "missing"}, {"norm.final", "ln_b"}});
  EXPECT_NE(no_block.find("'block.in'"), std::string::npos) << no_block;
  EXPECT_NE(no_block.find("selects no block"), std::string::npos) << no_block;
  EXPECT_EQ(on_toy({{"block.in", "ln_a"}, {"norm.final", "ln_b"}}), "no error");
}
