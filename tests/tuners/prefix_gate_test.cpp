// The prefix gate (UniPELT, Mao et al. 2022, sec. 3.2; PrefixGate in include/peft/model.h):
// - on an encoder (BERT) it equals the authors' gate: the prefix keys and values of layer l
//   scaled by g_l = mean_t sigmoid(W_l x_t + b_l) over the layer input, written out here as an
//   ungated prefix scaled by hand;
// - in a causal LM query i averages over tokens <= i only: later tokens leave earlier logits
//   unchanged, and on a one-layer Llama every position equals the hand-scaled ungated prefix
//   with its own g_i;
// - KV-cache decoding equals the full forward (Llama, GPT-2, T5: the gate scores of earlier
//   tokens are cached; beam search reorders them with the keys and values);
// - closed-form counts, bit-exact save/load, float64 finite differences, config errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/generate.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using peft::test::error_of;
using peft::test::fixture_input;
using peft::test::fixture_peft_model;
using peft::test::logits_of;
using peft::test::max_diff;
using peft::test::source_path;

namespace {

const int64_t kP = 3;
// The gate on an encoder-decoder needs the paper's three-site layout (no effect on the others).
nlohmann::json gated(int64_t P = kP) {
  return {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", P}, {"prefix_gate", true}, {"prefix_layout", "paper"}};
}

// Gate weights large enough that g_i varies visibly between queries and examples.
void widen_gate(PeftModel& pm) {
  torch::NoGradGuard ng;
  for (auto& [name, t] : pm.named_trainable_parameters())
    if (name.find("prefix_gate") != std::string::npos) t.copy_(torch::randn_like(t) * 2.0);
}

// An ungated prefix-tuning model with prompt embeddings `emb` (the rows of one site) whose
// layer-l key/value columns are multiplied by scale[l].
PeftModelPtr scaled_prefix_model(ModelPtr base, const torch::Tensor& emb, const std::vector<double>& scale) {
  base->eval();
  auto pm = std::make_shared<PeftModel>(base);
  pm->add_adapter("default", {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", emb.size(0)}});
  const int64_t L = scale.size(), td = emb.size(1) / (2 * L);
  auto t = emb.clone();
  for (int64_t l = 0; l < L; ++l) t.slice(1, 2 * l * td, (2 * l + 2) * td).mul_(scale[l]);
  auto sd = pm->adapter_state_dict("default");  // with its copy of the head (SEQ_CLS)
  sd["prompt_embeddings"] = t;
  pm->load_adapter_state_dict("default", sd, "test");
  return pm;
}

double sigmoid_mean(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  return torch::sigmoid(torch::matmul(x, w) + b).mean().item<double>();
}

TEST(PrefixGate, BertEqualsTheAuthorsPerSequenceGate) {
  const auto bert_dir = source_path("tests/fixtures/hf/models/bert_cls");
  auto pm = fixture_peft_model("bert_cls");
  pm->add_adapter("default", gated());
  widen_gate(*pm);
  auto sd = pm->adapter_state_dict("default");
  auto W = sd.at("prefix_gate.weight"), b = sd.at("prefix_gate.bias");
  ASSERT_EQ(W.size(0), 2);  // one row per layer
  // Unpadded rows, one example at a time (each has its own gate).
  auto ids = torch::tensor({{2, 17, 40, 9, 33, 3}, {2, 5, 61, 22, 8, 3}}, torch::kLong);
  for (int64_t r = 0; r < ids.size(0); ++r) {
    ModelInput in;
    in.input_ids = ids.slice(0, r, r + 1);
    in.output_hidden_states = true;
    torch::NoGradGuard ng;
    auto out = pm->forward(in);
    // BERT's self-attention reads the block input: hidden_states[l].
    std::vector<double> g;
    for (int64_t l = 0; l < 2; ++l) g.push_back(sigmoid_mean(out.hidden_states[l][0], W[l], b[l]));
    EXPECT_GT(std::abs(g[0] - g[1]), 1e-3);
    auto ref = scaled_prefix_model(load_model(bert_dir), sd.at("prompt_embeddings"), g);
    ModelInput plain;
    plain.input_ids = in.input_ids;
    // The classifier copies (modules_to_save) both start from the base head.
    auto want = logits_of(*ref, plain);
    EXPECT_LT(max_diff(out.logits, want), 1e-5) << "row " << r;
    auto ungated = scaled_prefix_model(load_model(bert_dir), sd.at("prompt_embeddings"), {1.0, 1.0});
    EXPECT_GT(max_diff(out.logits, logits_of(*ungated, plain)), 1e-4) << "the gate acts";
  }
}

TEST(PrefixGate, CausalLmLaterTokensDoNotReachEarlierPositions) {
  auto pm = fixture_peft_model("llama");
  pm->add_adapter("default", gated());
  widen_gate(*pm);
  ModelInput a, b;
  a.input_ids = torch::tensor({{1, 45, 112, 7, 201, 33}}, torch::kLong);
  b.input_ids = a.input_ids.clone();
  b.input_ids[0][4] = 90;
  b.input_ids[0][5] = 3;
  auto la = logits_of(*pm, a), lb = logits_of(*pm, b);
  EXPECT_TRUE(torch::equal(la.slice(1, 0, 4), lb.slice(1, 0, 4)));
  EXPECT_GT(max_diff(la.slice(1, 4), lb.slice(1, 4)), 1e-4);
}

// One layer: position i's logits depend on layer 0's attention at query i alone, so they equal
// the ungated prefix scaled by g_i = mean_{t <= i} sigmoid(W x_t + b), x = input_layernorm(emb).
TEST(PrefixGate, OneLayerLlamaEqualsPerQueryScaledPrefix) {
  auto cfg = read_json(source_path("tests/fixtures/hf/models/llama/config.json"));
  cfg["num_hidden_layers"] = 1;
  torch::manual_seed(3);
  auto base = create_model(cfg);
  base->eval();
  const auto weights = base->state_dict();
  auto fresh = [&] {
    auto m = create_model(cfg);
    m->load_weights(weights, "test");
    return m;
  };
  auto pm = std::make_shared<PeftModel>(base);
  pm->add_adapter("default", gated());
  widen_gate(*pm);
  auto sd = pm->adapter_state_dict("default");
  auto W = sd.at("prefix_gate.weight")[0], bias = sd.at("prefix_gate.bias")[0];
  ModelInput in;
  in.input_ids = torch::tensor({{1, 45, 112, 7, 201}}, torch::kLong);
  in.output_hidden_states = true;
  torch::NoGradGuard ng;
  auto out = pm->forward(in);
  auto emb = out.hidden_states[0][0];  // [T, H]
  auto norm_w = weights.at("model.layers.0.input_layernorm.weight");
  auto x = emb * torch::rsqrt(emb.pow(2).mean(-1, true) + cfg["rms_norm_eps"].get<double>()) * norm_w;
  auto s = torch::sigmoid(torch::matmul(x, W) + bias);  // [T]
  std::vector<double> gs;
  for (int64_t i = 0; i < in.input_ids.size(1); ++i) {
    const double g = s.slice(0, 0, i + 1).mean().item<double>();
    gs.push_back(g);
    auto ref = scaled_prefix_model(fresh(), sd.at("prompt_embeddings"), {g});
    ModelInput plain;
    plain.input_ids = in.input_ids;
    auto want = logits_of(*ref, plain);
    EXPECT_LT(max_diff(out.logits.select(1, i), want.select(1, i)), 1e-5) << "position " << i;
  }
  EXPECT_GT(*std::max_element(gs.begin(), gs.end()) - *std::min_element(gs.begin(), gs.end()), 1e-3);
}

// One token at a time through the KV cache (then a chunk of 2) equals the full forward.
class PrefixGateDecoding : public ::testing::TestWithParam<std::string> {};
TEST_P(PrefixGateDecoding, IncrementalEqualsFullForward) {
  auto pm = fixture_peft_model(GetParam());
  pm->add_adapter("default", gated());
  widen_gate(*pm);
  auto ids = torch::tensor({{1, 45, 112, 7, 201, 33}, {1, 9, 80, 17, 4, 60}}, torch::kLong);
  ModelInput full;
  full.input_ids = ids;
  auto ref = logits_of(*pm, full);
  KVCache cache;
  for (int64_t t = 0; t < ids.size(1);) {
    const int64_t len = t == 3 ? 2 : 1;
    ModelInput step;
    step.input_ids = ids.slice(1, t, t + len);
    step.attention_mask = torch::ones({2, t + len}, torch::kLong);
    step.cache = &cache;
    auto lg = logits_of(*pm, step);
    EXPECT_LT(max_diff(lg, ref.slice(1, t, t + len)), 1e-5) << GetParam() << " step " << t;
    t += len;
  }
  ASSERT_EQ(cache.gate_scores.size(), 2u);
  EXPECT_EQ(cache.gate_scores[0].size(1), ids.size(1));
}
INSTANTIATE_TEST_SUITE_P(All, PrefixGateDecoding, ::testing::Values("llama", "gpt2"));

TEST(PrefixGate, T5DecoderIncrementalEqualsFullForward) {
  auto pm = fixture_peft_model("t5");
  pm->add_adapter("default", gated());
  widen_gate(*pm);
  auto in = fixture_input("t5");
  torch::NoGradGuard ng;
  auto ref = pm->forward(in);
  KVCache cache;
  auto dec = in.decoder_input_ids;
  for (int64_t t = 0; t < dec.size(1); ++t) {
    ModelInput s;
    s.encoder_hidden_states = ref.encoder_last_hidden_state;
    s.attention_mask = in.attention_mask;
    s.decoder_input_ids = dec.slice(1, t, t + 1);
    s.cache = &cache;
    auto lg = pm->forward(s).logits;
    EXPECT_LT(max_diff(lg, ref.logits.slice(1, t, t + 1)), 1e-5) << "step " << t;
  }
  EXPECT_EQ(cache.cross_gate_scores.size(), cache.gate_scores.size());
  // Each of the three sites (decoder self, cross, encoder) has its own gate rows.
  auto sd = pm->adapter_state_dict("default");
  ASSERT_EQ(sd.at("prefix_gate.weight").size(0), 3 * 2);  // 2 layers per stack
  for (int site = 0; site < 3; ++site) {
    auto pm2 = fixture_peft_model("t5");
    pm2->add_adapter("default", gated());
    auto t = sd;
    t["prefix_gate.bias"] = sd.at("prefix_gate.bias").clone();
    t["prefix_gate.bias"].slice(0, 2 * site, 2 * site + 2).add_(3.0);
    pm2->load_adapter_state_dict("default", t, "test");
    auto o = pm2->forward(in);
    EXPECT_GT(max_diff(o.logits, ref.logits), 1e-5) << "site " << site;
    EXPECT_EQ(max_diff(o.encoder_last_hidden_state, ref.encoder_last_hidden_state) > 0, site == 2) << "site " << site;
  }
}

// Beam search reorders the cached gate scores with the keys and values: with length_penalty 0
// each beam's score is the sum of its tokens' log-probs under a full, uncached forward.
TEST(PrefixGate, T5BeamSearchScoresEqualUncachedForward) {
  auto pm = fixture_peft_model("t5");
  pm->add_adapter("default", gated());
  widen_gate(*pm);
  auto in = fixture_input("t5");
  torch::NoGradGuard ng;
  GenerateOptions o;
  o.max_new_tokens = 6;
  o.num_beams = 3;
  o.length_penalty = 0.0;
  auto r = generate_seq2seq(*pm->model, in.input_ids, in.attention_mask, o,
                            [&](const ModelInput& x) { return pm->forward(x); });
  ModelInput full;
  full.input_ids = in.input_ids;
  full.attention_mask = in.attention_mask;
  full.decoder_input_ids = r.sequences.slice(1, 0, -1);
  auto logp = torch::log_softmax(pm->forward(full).logits, -1);
  auto toks = r.sequences.slice(1, 1);
  auto e = toks.eq(1).to(torch::kLong);  // EOS = 1: count up to and including the first
  auto keep = (e.cumsum(1) - e).eq(0).to(torch::kFloat32);
  auto sums = (logp.gather(2, toks.unsqueeze(2)).squeeze(2) * keep).sum(1);
  EXPECT_TRUE(torch::allclose(sums, r.scores, 1e-4, 1e-4)) << sums << r.scores;
}

struct GateCase {
  std::string model;
  int64_t expected;  // prefix + one gate row (hidden + 1) per attention layer (+ a SEQ_CLS head copy)
};
class PrefixGateMethod : public ::testing::TestWithParam<GateCase> {};
TEST_P(PrefixGateMethod, CountSaveLoadAndGradients) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model);
  pm->add_adapter("default", gated());
  EXPECT_EQ(pm->trainable_report().trainable, c.expected) << pm->trainable_report().to_string();
  EXPECT_EQ(pm->trainable_report().by_method.at("prefix_tuning"), c.expected - (c.model == "bert_cls" ? 130 : 0));
  widen_gate(*pm);
  auto in = fixture_input(c.model);
  peft::test::expect_save_load_bit_exact(*pm, c.model, in, "prefix_gate_" + c.model);
  auto dir = peft::test::temp_dir("prefix_gate_cfg_" + c.model);
  pm->save_adapter(dir);
  EXPECT_EQ(read_json(dir + "/peft_cpp_config.json").value("prefix_gate", false), true);
  EXPECT_FALSE(read_json(dir + "/adapter_config.json").contains("prefix_gate"));  // peft's file stays peft's

  auto pf = fixture_peft_model(c.model, torch::kFloat64);
  pf->add_adapter("default", gated());
  pf->to(torch::kFloat64);
  widen_gate(*pf);
  peft::test::expect_gradients_match_finite_differences(*pf, in, "prefix_gate_" + c.model);
}
// Every fixture has hidden 64 and 2 layers. llama: kv token_dim 2 x 16; gpt2, bert_cls: 64
// (bert_cls: + the classifier copy 2 x 64 + 2); t5: three sites (decoder self, cross, encoder)
// of 2 layers, token_dim 4 x 16, so 3 x 2 gate rows.
INSTANTIATE_TEST_SUITE_P(All, PrefixGateMethod,
                         ::testing::Values(GateCase{"llama", kP * 2 * 2 * 32 + 2 * 65},
                                           GateCase{"gpt2", kP * 2 * 2 * 64 + 2 * 65},
                                           GateCase{"bert_cls", kP * 2 * 2 * 64 + 2 * 65 + 130},
                                           GateCase{"t5", 3 * kP * 2 * 2 * 64 + 6 * 65}),
                         [](const auto& info) { return info.param.model; });

TEST(PrefixGate, ConfigAndFileErrors) {
  auto pm = fixture_peft_model("llama");
  auto bad = gated();
  bad["prefix_gate"] = "yes";
  EXPECT_NE(error_of([&] { pm->add_adapter("default", bad); }).find("prefix_gate"), std::string::npos);

  // A gated file loaded under a config without the gate, and the reverse: clear errors.
  auto g = fixture_peft_model("llama");
  g->add_adapter("default", gated());
  auto tensors = g->adapter_state_dict("default");
  auto plain = fixture_peft_model("llama");
  plain->add_adapter("default", {{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", kP}});
  EXPECT_NE(error_of([&] { plain->load_adapter_state_dict("default", tensors, "f.safetensors"); })
                .find("tensor 'prefix_gate."),
            std::string::npos);
  tensors.erase("prefix_gate.bias");
  EXPECT_NE(error_of([&] { g->load_adapter_state_dict("default", tensors, "f.safetensors"); }).find("is missing"),
            std::string::npos);
  // T5 in peft's layout (the default) has no per-site prefixes to gate.
  auto t5 = fixture_peft_model("t5");
  auto in_peft_layout = gated();
  in_peft_layout.erase("prefix_layout");
  EXPECT_NE(error_of([&] { t5->add_adapter("default", in_peft_layout); }).find("prefix_layout"), std::string::npos);
}

}  // namespace
