// Tuners on the encoder (BERT, RoBERTa) and encoder-decoder (T5) families: Python peft's
// BERT adapters (tests/fixtures/peft/adapters/bert_cls/*) reproduce peft's logits, loss, merged
// logits, saved keys and config fields; merge_and_unload reproduces peft's merged checkpoint
// (tests/fixtures/hf/merged/bert_cls_lora); modules_to_save copies RoBERTa's composite head;
// LoRA and IA3 on T5 / T5 v1.1 are the identity at init, merge exactly, have finite-difference
// gradients in float64 and pick their default targets through the model's roles; prompt
// tuning, P-tuning and prefix tuning (encoder, decoder and cross-attention prefixes) on T5.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>

#include "peft/generate.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using peft::test::source_path;
using peft::test::temp_dir;

namespace {

// Fixture model names (tests/fixtures/hf/models/<name>).
const std::string kBert = "bert_cls";
const std::string kRoberta = "roberta_cls";

using peft::test::fixture_input;
using peft::test::logits_of;
using peft::test::max_diff;

PeftModelPtr peft_on(const std::string& model, torch::Dtype dtype = torch::kFloat32) {
  return peft::test::fixture_peft_model(model, dtype);
}

void randomize(PeftModel& pm, double scale) {
  torch::NoGradGuard ng;
  for (auto& t : pm.trainable_parameters()) {
    bool ones = t.numel() > 0 && t.min().item<double>() > 0.5;  // IA3 vectors start at 1
    t.copy_(torch::randn_like(t) * scale + (ones ? 1.0 : 0.0));
  }
}

}  // namespace

// ---- BERT: Python peft's adapters --------------------------------------------------------------

class BertPeftFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(BertPeftFixture, LoadsAdapterAndMatchesPeft) {
  const std::string method = GetParam();
  const std::string dir = source_path("tests/fixtures/peft/adapters/bert_cls/" + method);
  auto pm = peft_on(kBert);
  auto base_weights = pm->model->state_dict();
  for (auto& kv : base_weights) kv.second = kv.second.clone();
  pm->load_adapter(dir);

  // The adapter's own classifier copy is used (modules_to_save), not the base classifier.
  bool has_classifier = false;
  for (auto& [path, layer] : pm->tuner_layers())
    if (path == "classifier") has_classifier = layer->method() == "modules_to_save";
  EXPECT_TRUE(has_classifier);

  // Logits, loss, merge and the saved file (classifier copy included) against peft's.
  auto tmp = peft::test::expect_matches_peft_fixture(*pm, base_weights, dir, fixture_input(kBert), "bert_fixture_save");
  auto cfg = read_json(tmp + "/adapter_config.json");
  EXPECT_EQ(cfg["task_type"], "SEQ_CLS");
  EXPECT_EQ(cfg["modules_to_save"], read_json(dir + "/adapter_config.json")["modules_to_save"]);
}

INSTANTIATE_TEST_SUITE_P(Bert, BertPeftFixture,
                         ::testing::Values("lora", "rslora", "dora", "ia3", "loha", "lokr", "lokr_decomposed", "adalora"));

// peft's IA3 defaults on BERT: `output.dense` hits both attention.output.dense and the FFN's
// output.dense, and both scale their input (feed-forward).
TEST(BertIA3, OutputDenseIsFeedForwardInBothPlaces) {
  auto pm = peft_on(kBert);
  pm->load_adapter(source_path("tests/fixtures/peft/adapters/bert_cls/ia3"));
  auto sd = pm->adapter_state_dict("default");
  const std::string p = "base_model.model.bert.encoder.layer.0.";
  EXPECT_EQ(sd.at(p + "attention.output.dense.ia3_l").sizes(), torch::IntArrayRef({1, 64}));
  EXPECT_EQ(sd.at(p + "output.dense.ia3_l").sizes(), torch::IntArrayRef({1, 128}));
  EXPECT_EQ(sd.at(p + "attention.self.key.ia3_l").sizes(), torch::IntArrayRef({64, 1}));
  // The same from a config without target/feedforward modules (peft's defaults via roles).
  auto pm2 = peft_on(kBert);
  pm2->add_adapter("default", method_config("ia3", {{"task_type", "SEQ_CLS"}}));
  std::vector<std::string> targeted = pm2->adapter("default").targeted;
  std::sort(targeted.begin(), targeted.end());
  EXPECT_EQ(targeted.size(), 8u);
  auto sd2 = pm2->adapter_state_dict("default");
  for (auto& kv : sd)
    if (kv.first.find("ia3_l") != std::string::npos) {
      ASSERT_TRUE(sd2.count(kv.first)) << kv.first;
      EXPECT_EQ(sd2.at(kv.first).sizes(), kv.second.sizes()) << kv.first;
    }
}

// merge_and_unload of peft's LoRA adapter = peft's merged checkpoint, weight by weight (the
// adapter's classifier copy replaces the base classifier).
TEST(BertMerged, MergeAndUnloadEqualsPeftCheckpoint) {
  auto pm = peft_on(kBert);
  pm->load_adapter(source_path("tests/fixtures/peft/adapters/bert_cls/lora"));
  auto merged = pm->merge_and_unload();
  const std::string mdir = source_path("tests/fixtures/hf/merged/bert_cls_lora");
  auto want = load_safetensors(mdir + "/model.safetensors");
  auto have = merged->state_dict();
  for (auto& kv : want) {
    ASSERT_TRUE(have.count(kv.first)) << kv.first;
    EXPECT_LT(max_diff(have.at(kv.first), kv.second), 1e-6) << kv.first;
  }
  for (auto& kv : have)
    if (!merged->ignorable_key(kv.first)) EXPECT_TRUE(want.count(kv.first)) << "extra " << kv.first;
  auto adapter = load_safetensors(source_path("tests/fixtures/peft/adapters/bert_cls/lora/adapter_model.safetensors"));
  EXPECT_TRUE(torch::equal(have.at("classifier.weight"), adapter.at("base_model.model.classifier.weight")));

  auto ref = load_safetensors(mdir + "/reference.safetensors");
  torch::NoGradGuard ng;
  auto out = merged->forward(fixture_input(kBert));
  EXPECT_TRUE(torch::allclose(out.logits, ref.at("logits"), 1e-4, 1e-5)) << max_diff(out.logits, ref.at("logits"));
  EXPECT_NEAR(out.loss.item<double>(), ref.at("loss").item<double>(), 1e-5);

  // Written with save_pretrained, it reloads as a plain BERT classifier with the same output.
  auto dir = temp_dir("bert_merged");
  merged->save_pretrained(dir);
  auto re = load_model(dir);
  re->eval();
  EXPECT_LT(max_diff(re->forward(fixture_input(kBert)).logits, out.logits), 1e-6);
}

// ---- RoBERTa: modules_to_save on a composite head ----------------------------------------------

TEST(RobertaModulesToSave, CompositeHeadIsCopiedTrainedSavedAndMerged) {
  auto pm = peft_on(kRoberta);
  auto in = fixture_input(kRoberta);
  auto base = logits_of(*pm, in);
  auto base_sd = pm->model->state_dict();
  for (auto& kv : base_sd) kv.second = kv.second.clone();
  pm->add_adapter("default", method_config("lora", {{"r", 4}, {"target_modules", {"query", "value"}},
                                                    {"modules_to_save", {"classifier"}}}));
  EXPECT_LT(max_diff(logits_of(*pm, in), base), 1e-6);  // the copy starts equal to the head
  auto named = pm->named_trainable_parameters();
  std::vector<std::string> head;
  for (auto& [n, t] : named)
    if (n.find("classifier.modules_to_save.default.") != std::string::npos) head.push_back(n);
  std::sort(head.begin(), head.end());
  ASSERT_EQ(head.size(), 4u);  // dense.{weight,bias}, out_proj.{weight,bias}
  EXPECT_NE(head[0].find("dense.bias"), std::string::npos);

  // One training step moves the copy, never the base head.
  pm->train();
  std::vector<torch::Tensor> params;
  for (auto& kv : named) params.push_back(kv.second);
  torch::optim::SGD opt(params, torch::optim::SGDOptions(0.5));
  pm->forward(in).loss.backward();
  opt.step();
  pm->eval();
  auto after = pm->model->state_dict();
  for (auto& k : {"classifier.dense.weight", "classifier.out_proj.weight"}) {
    std::string wrapped = std::string("classifier.base_layer.") + (k + 11);
    ASSERT_TRUE(after.count(wrapped)) << wrapped;
    EXPECT_TRUE(torch::equal(after.at(wrapped), base_sd.at(k))) << k;
    std::string copy = std::string("classifier.modules_to_save.default.") + (k + 11);
    EXPECT_GT(max_diff(after.at(copy), base_sd.at(k)), 0.0) << copy;
  }
  auto trained = logits_of(*pm, in);
  EXPECT_GT(max_diff(trained, base), 1e-4);

  // Saved as peft names it; reloads to the same output.
  auto dir = temp_dir("roberta_mts");
  pm->save_adapter(dir);
  auto saved = load_safetensors(dir + "/adapter_model.safetensors");
  for (auto& k : {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight", "classifier.out_proj.bias"})
    EXPECT_TRUE(saved.count(std::string("base_model.model.") + k)) << k;
  auto pm2 = peft_on(kRoberta);
  pm2->load_adapter(dir);
  EXPECT_TRUE(torch::equal(logits_of(*pm2, in), trained));

  // merge_and_unload puts the trained copy in place of the head.
  auto merged = pm2->merge_and_unload();
  auto sd = merged->state_dict();
  EXPECT_TRUE(torch::equal(sd.at("classifier.out_proj.weight"), saved.at("base_model.model.classifier.out_proj.weight")));
  torch::NoGradGuard ng;
  EXPECT_LT(max_diff(merged->forward(in).logits, trained), 1e-5);
}

TEST(RobertaModulesToSave, CloneLayerCopiesEveryComposite) {
  // Every slot that is a Layer of the RoBERTa classifier (head, FFN intermediate, activations)
  // can be copied: same output, independent parameters.
  auto m = load_model(source_path("tests/fixtures/hf/models/" + kRoberta));
  m->eval();
  torch::NoGradGuard ng;
  for (auto& ref : find_slots(*m)) {
    auto layer = ref.get();
    auto copy = layer->clone_layer();
    auto p1 = layer->parameters(), p2 = copy->parameters();
    ASSERT_EQ(p1.size(), p2.size()) << ref.path;
    for (size_t i = 0; i < p1.size(); ++i) {
      EXPECT_TRUE(torch::equal(p1[i], p2[i])) << ref.path;
      EXPECT_NE(p1[i].data_ptr(), p2[i].data_ptr()) << ref.path;
    }
    int64_t in_dim = ref.path.find("output.dense") != std::string::npos && ref.path.find("attention") == std::string::npos ? 128 : 64;
    auto x = ref.path == "classifier" ? torch::randn({2, 3, 64}) : torch::randn({2, 3, in_dim});
    EXPECT_TRUE(torch::equal(layer->forward(x), copy->forward(x))) << ref.path;
  }
}

// ---- T5: LoRA and IA3 --------------------------------------------------------------------------

struct T5Case {
  std::string model, method;
};

class T5Tuner : public ::testing::TestWithParam<T5Case> {};

TEST_P(T5Tuner, DefaultTargetsIdentityMergeAndGradients) {
  auto c = GetParam();
  const std::string dir = c.model;
  auto in = fixture_input(dir);
  {
    auto pm = peft_on(dir);
    auto base = logits_of(*pm, in);
    pm->add_adapter("default", method_config(c.method));  // target_modules from roles
    auto targeted = pm->adapter("default").targeted;
    // q and v of every self-attention and cross-attention (lora), k, v, wo (ia3).
    std::vector<std::string> suffixes = c.method == "lora" ? std::vector<std::string>{".q", ".v"}
                                                           : std::vector<std::string>{".k", ".v", ".wo"};
    int64_t attn = 2 /*enc self*/ + 2 * 2 /*dec self + cross*/;
    int64_t expect = c.method == "lora" ? 2 * attn : 2 * attn + 4 /*wo: 2 enc + 2 dec*/;
    EXPECT_EQ((int64_t)targeted.size(), expect);
    for (auto& t : targeted) {
      bool ok = false;
      for (auto& s : suffixes) ok = ok || (t.size() > s.size() && t.compare(t.size() - s.size(), s.size(), s) == 0);
      EXPECT_TRUE(ok) << t;
    }
    EXPECT_TRUE(std::any_of(targeted.begin(), targeted.end(),
                            [](const std::string& t) { return t.find("EncDecAttention") != std::string::npos; }));
    EXPECT_EQ(pm->adapter("default").config["task_type"], "SEQ_2_SEQ_LM");
    EXPECT_LT(max_diff(logits_of(*pm, in), base), 1e-6);

    randomize(*pm, 0.1);
    auto out = logits_of(*pm, in);
    EXPECT_GT(max_diff(out, base), 1e-4);
    // float32 rounding relative to the logits' size (T5 v1.1's untied head is not rescaled).
    const double tol = 1e-5 * std::max(1.0, out.abs().max().item<double>());
    pm->merge();
    EXPECT_LT(max_diff(logits_of(*pm, in), out), tol);
    pm->unmerge();
    EXPECT_LT(max_diff(logits_of(*pm, in), out), tol);

    // Round trip through peft's format.
    auto tmp = temp_dir("t5_" + c.method);
    pm->save_adapter(tmp);
    auto pm2 = peft_on(dir);
    pm2->load_adapter(tmp);
    EXPECT_TRUE(torch::equal(logits_of(*pm2, in), out));
  }
  // Finite differences in float64.
  auto pm = peft_on(dir, torch::kFloat64);
  pm->add_adapter("default", method_config(c.method));
  pm->to(torch::kFloat64);
  randomize(*pm, 0.3);
  // A third of the tensors keeps the test quick.
  peft::test::expect_gradients_match_finite_differences(*pm, in, c.method, /*every=*/3);
}

INSTANTIATE_TEST_SUITE_P(All, T5Tuner,
                         ::testing::Values(T5Case{"t5", "lora"}, T5Case{"t5", "ia3"}, T5Case{"t5_v1_1", "lora"},
                                           T5Case{"t5_v1_1", "ia3"}),
                         [](const auto& info) { return info.param.model + "_" + info.param.method; });

// ---- T5: prompt tuning, P-tuning, prefix tuning ----------------------------------------------
// Prompt tuning / P-tuning prepend virtual tokens to the encoder input; prefix tuning in the
// explicit "paper" layout gives the encoder, the decoder and the decoder's cross-attention their
// own key/value prefixes (Li & Liang 2021, sec. 4.2; peft's default layout is checked against its
// fixture in prompt_t5_prefix_test.cpp). Checked: closed-form counts, save -> load bit-exact, each prefix
// reaching only its site, cached greedy decoding equal to uncached argmax decoding, and
// float64 finite-difference gradients.

class T5PromptLearning : public ::testing::TestWithParam<T5Case> {};

TEST_P(T5PromptLearning, CountsRoundTripDecodingAndGradients) {
  auto c = GetParam();
  const std::string dir = c.model;
  const bool prefix = c.method.find("prefix") != std::string::npos || c.method == "p-tuning-v2";
  const int64_t P = 3;
  auto in = fixture_input(dir);
  auto pm = peft_on(dir);
  auto base = logits_of(*pm, in);
  nlohmann::json opts = {{"num_virtual_tokens", P}};
  if (prefix) opts["prefix_layout"] = "paper";
  pm->add_adapter("default", method_config(c.method, opts));
  auto d = pm->model->dims();
  const int64_t D = d.hidden_size, td = d.head_dim * d.num_heads, L = std::max(d.num_layers, d.num_decoder_layers);
  const auto& cfg = pm->adapter("default").config;
  int64_t expect = 0;
  if (c.method == "prompt-tuning") expect = 2 * P * D;  // peft keeps two sets of rows on encoder-decoders
  if (c.method == "p-tuning") {
    const int64_t h = cfg["encoder_hidden_size"].get<int64_t>();
    expect = 2 * P * D + (D * h + h) + (h * h + h) + (h * D + D);
  }
  if (c.method == "prefix-tuning") {
    const int64_t h = cfg["encoder_hidden_size"].get<int64_t>();
    expect = 3 * P * td + (td * h + h) + (h * L * 2 * td + L * 2 * td);
  }
  if (c.method == "p-tuning-v2") expect = 3 * P * L * 2 * td;
  EXPECT_EQ(pm->trainable_report().trainable, expect);

  auto out = logits_of(*pm, in);
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
  EXPECT_GT(max_diff(out, base), 1e-4);  // the virtual tokens act

  auto tmp = temp_dir("t5_prompt_" + c.method + "_" + c.model);
  pm->save_adapter(tmp);
  auto pm2 = peft_on(dir);
  pm2->load_adapter(tmp);
  EXPECT_TRUE(torch::equal(logits_of(*pm2, in), out));

  if (prefix) {  // rows [0, P): decoder self-attention, [P, 2P): cross-attention, [2P, 3P): encoder
    auto sd = pm2->adapter_state_dict("default");
    auto enc_of = [&](PeftModel& m) {
      torch::NoGradGuard ng;
      return m.forward(in).encoder_last_hidden_state;
    };
    auto enc0 = enc_of(*pm2);
    for (int site = 0; site < 3; ++site) {
      auto pm3 = peft_on(dir);
      pm3->load_adapter(tmp);
      auto t = sd.at("prompt_embeddings").clone();
      t.slice(0, site * P, (site + 1) * P).add_(0.5);
      pm3->load_adapter_state_dict("default", {{"prompt_embeddings", t}}, "test");
      EXPECT_GT(max_diff(logits_of(*pm3, in), out), 1e-5) << "site " << site;
      EXPECT_EQ(max_diff(enc_of(*pm3), enc0) > 0, site == 2) << "site " << site;
    }
  }

  // Cached greedy decoding through the adapter's forward equals argmax of uncached forwards.
  {
    torch::NoGradGuard ng;
    GenerateOptions o;
    o.max_new_tokens = 5;
    o.eos_token_id = d.vocab_size + 1;  // never produced: every row runs the full length
    auto r = generate_seq2seq(*pm2->model, in.input_ids, in.attention_mask, o,
                              [&](const ModelInput& x) { return pm2->forward(x); });
    ASSERT_EQ(r.sequences.size(1), 1 + o.max_new_tokens);
    for (int64_t j = 0; j < o.max_new_tokens; ++j) {
      ModelInput mi;
      mi.input_ids = in.input_ids;
      mi.attention_mask = in.attention_mask;
      mi.decoder_input_ids = r.sequences.slice(1, 0, j + 1);
      auto next = pm2->forward(mi).logits.select(1, j).argmax(-1);
      EXPECT_TRUE(torch::equal(next, r.sequences.select(1, j + 1))) << "step " << j;
    }
  }

  // Finite differences in float64 on the virtual tokens (and the prompt encoder).
  auto pf = peft_on(dir, torch::kFloat64);
  pf->add_adapter("default", method_config(c.method, opts));
  pf->to(torch::kFloat64);
  peft::test::expect_gradients_match_finite_differences(*pf, in, c.method);
}

INSTANTIATE_TEST_SUITE_P(All, T5PromptLearning,
                         ::testing::Values(T5Case{"t5", "prompt-tuning"}, T5Case{"t5", "p-tuning"},
                                           T5Case{"t5", "prefix-tuning"}, T5Case{"t5", "p-tuning-v2"},
                                           T5Case{"t5_v1_1", "prefix-tuning"}, T5Case{"t5_v1_1", "prompt-tuning"}),
                         [](const auto& info) {
                           std::string n = info.param.model + "_" + info.param.method;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });
