// GPT-2 logits against the transformers fixture (tests/fixtures/hf/models/gpt2, made with
// transformers 4.37.2 GPT2LMHeadModel, eager attention; right-padded batch included).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>

#include "peft/io.h"
#include "peft/model.h"
#include "test_util.h"

using namespace peft;

namespace {
const char* kDir = "tests/fixtures/hf/models/gpt2";

void expect_close(const torch::Tensor& a, const torch::Tensor& b, double atol, double rtol, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  auto diff = (a - b).abs();
  auto tol = atol + rtol * b.abs();
  EXPECT_TRUE((diff <= tol).all().item<bool>()) << what << ": max abs diff " << diff.max().item<double>();
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const peft::Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(GPT2Model, MatchesTransformersFixture) {
  std::string dir = test::source_path(kDir);
  auto model = load_model(dir);
  model->eval();
  EXPECT_EQ(model->model_type(), "gpt2");
  EXPECT_EQ(model->task(), TaskType::CausalLM);
  auto in = load_safetensors(dir + "/inputs.safetensors");
  auto ref = load_safetensors(dir + "/reference.safetensors");
  ASSERT_FALSE(in["attention_mask"].all().item<bool>()) << "fixture should contain a padded row";
  ModelInput mi;
  mi.input_ids = in["input_ids"];
  mi.attention_mask = in["attention_mask"];
  mi.labels = in["labels"];
  mi.output_hidden_states = true;
  torch::NoGradGuard ng;
  auto out = model->forward(mi);
  expect_close(out.logits, ref["logits"], 1e-5, 1e-4, "gpt2 logits");
  EXPECT_NEAR(out.loss.item<double>(), ref["loss"].item<double>(), 1e-5);
  ASSERT_EQ(out.hidden_states.size(), 3u);  // embeddings, after block 0, after ln_f
  for (size_t i = 0; i < out.hidden_states.size(); ++i) {
    auto key = "hidden_states." + std::to_string(i);
    ASSERT_TRUE(ref.count(key)) << key;
    expect_close(out.hidden_states[i], ref[key], 1e-5, 1e-4, "gpt2 " + key);
  }
}

TEST(GPT2Model, StateDictHasHuggingFaceNamesAndSlots) {
  std::string dir = test::source_path(kDir);
  auto model = load_model(dir);
  auto file = load_safetensors(dir + "/model.safetensors");
  auto sd = model->state_dict();
  std::vector<std::string> a, b;
  for (auto& kv : sd) a.push_back(kv.first);
  for (auto& kv : file) b.push_back(kv.first);
  EXPECT_EQ(a, b);  // lm_head tied: not a parameter, not stored
  std::vector<std::string> slots;
  for (auto& s : find_slots(*model)) slots.push_back(s.path);
  for (const char* want : {"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.1.mlp.c_fc",
                           "transformer.h.1.mlp.c_proj", "transformer.h.1.mlp.act", "transformer.h.0.ln_1",
                           "transformer.h.0.ln_2", "transformer.h.0.mlp", "transformer.ln_f"})
    EXPECT_NE(std::find(slots.begin(), slots.end(), want), slots.end()) << want;
  auto roles = model->roles();
  EXPECT_EQ(roles["attn.qkv"], "attn.c_attn");
  EXPECT_EQ(roles["mlp.down"], "mlp.c_proj");
  EXPECT_EQ(model->layers_pattern(), "h");
  // Conv1D layout: c_fc weight is [in, out].
  EXPECT_EQ(sd["transformer.h.0.mlp.c_fc.weight"].sizes(), torch::IntArrayRef({64, 128}));
}

TEST(GPT2Model, IgnoresLegacyBuffersAndTiedHead) {
  std::string src = test::source_path(kDir);
  auto dir = test::temp_dir("gpt2_legacy");
  auto w = load_safetensors(src + "/model.safetensors");
  w["transformer.h.0.attn.bias"] = torch::tril(torch::ones({1, 1, 64, 64}));
  w["transformer.h.0.attn.masked_bias"] = torch::tensor(-1e4);
  w["lm_head.weight"] = w["transformer.wte.weight"];
  save_safetensors(dir + "/model.safetensors", w);
  write_json(dir + "/config.json", read_json(src + "/config.json"));
  auto model = load_model(dir);
  auto ref = load_model(src);
  auto ids = torch::tensor({{3, 17, 99, 4}}, torch::kLong);
  ModelInput mi;
  mi.input_ids = ids;
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(model->forward(mi).logits, ref->forward(mi).logits));
  // save_pretrained writes the HF state dict only (no buffers, no tied head).
  auto out = test::temp_dir("gpt2_saved");
  model->save_pretrained(out);
  auto saved = load_safetensors(out + "/model.safetensors");
  EXPECT_EQ(saved.size(), load_safetensors(src + "/model.safetensors").size());
  EXPECT_EQ(saved.count("lm_head.weight"), 0u);
}

TEST(GPT2Model, KVCacheMatchesFullForward) {
  auto model = load_model(test::source_path(kDir));
  model->eval();
  torch::NoGradGuard ng;
  auto ids = torch::tensor({{1, 45, 112, 7, 201, 33, 9}, {5, 6, 7, 8, 9, 10, 11}}, torch::kLong);
  ModelInput full;
  full.input_ids = ids;
  auto ref = model->forward(full).logits;
  KVCache cache;
  std::vector<torch::Tensor> parts;
  // Prompt of 4, then one token at a time (incremental decoding).
  for (auto [b, e] : std::vector<std::pair<int64_t, int64_t>>{{0, 4}, {4, 5}, {5, 6}, {6, 7}}) {
    ModelInput step;
    step.input_ids = ids.slice(1, b, e);
    step.attention_mask = torch::ones({2, e}, torch::kLong);
    step.cache = &cache;
    parts.push_back(model->forward(step).logits);
    EXPECT_EQ(cache.length(), e);
  }
  expect_close(torch::cat(parts, 1), ref, 1e-5, 1e-5, "incremental vs full");
}

TEST(GPT2Model, PositionsAreNotDerivedFromTheMask) {
  // Row 0 right-padded: its real tokens must give the same logits as the unpadded sequence.
  auto model = load_model(test::source_path(kDir));
  model->eval();
  torch::NoGradGuard ng;
  ModelInput a;
  a.input_ids = torch::tensor({{10, 20, 30, 0, 0}}, torch::kLong);
  a.attention_mask = torch::tensor({{1, 1, 1, 0, 0}}, torch::kLong);
  ModelInput b;
  b.input_ids = torch::tensor({{10, 20, 30}}, torch::kLong);
  auto la = model->forward(a).logits.slice(1, 0, 3), lb = model->forward(b).logits;
  expect_close(la, lb, 1e-5, 1e-5, "padded vs unpadded");
}

TEST(GPT2Model, SequenceClassificationPoolsLastRealToken) {
  LoadOptions opts;
  opts.task = TaskType::SeqCls;
  opts.num_labels = 3;
  std::string dir = test::source_path(kDir);
  auto model = load_model(dir, opts);  // score head is fresh, the rest from the checkpoint
  model->eval();
  EXPECT_EQ(model->task(), TaskType::SeqCls);
  auto in = load_safetensors(dir + "/inputs.safetensors");
  ModelInput mi;
  mi.input_ids = in["input_ids"];
  mi.attention_mask = in["attention_mask"];
  mi.labels = torch::tensor({0, 2}, torch::kLong);
  mi.output_hidden_states = true;
  torch::NoGradGuard ng;
  auto out = model->forward(mi);
  ASSERT_EQ(out.logits.sizes(), torch::IntArrayRef({2, 3}));
  ASSERT_TRUE(out.loss.defined());
  auto h = out.hidden_states.back();
  auto w = model->state_dict()["score.weight"];
  auto mask = in["attention_mask"];
  for (int64_t b = 0; b < 2; ++b) {
    int64_t last = mask[b].sum().item<int64_t>() - 1;
    auto expect = torch::matmul(h[b][last], w.t());
    expect_close(out.logits[b], expect, 1e-6, 1e-6, "pooled row " + std::to_string(b));
  }
  // By architecture name too.
  auto cfg = read_json(dir + "/config.json");
  cfg["architectures"] = {"GPT2ForSequenceClassification"};
  EXPECT_EQ(create_model(cfg)->task(), TaskType::SeqCls);
}

TEST(GPT2Model, RejectsBadConfig) {
  auto cfg = read_json(test::source_path(std::string(kDir) + "/config.json"));
  cfg["activation_function"] = "bogus_act";
  auto msg = error_of([&] { create_model(cfg); });
  EXPECT_NE(msg.find("activation_function"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bogus_act"), std::string::npos) << msg;
  cfg = read_json(test::source_path(std::string(kDir) + "/config.json"));
  cfg["n_head"] = 5;  // 64 not divisible by 5
  msg = error_of([&] { create_model(cfg); });
  EXPECT_NE(msg.find("n_head"), std::string::npos) << msg;
  cfg = read_json(test::source_path(std::string(kDir) + "/config.json"));
  cfg["n_embd"] = "64";
  msg = error_of([&] { create_model(cfg); });
  EXPECT_NE(msg.find("n_embd"), std::string::npos) << msg;
}

TEST(GPT2Model, NullInnerMeansFourTimesEmbd) {
  auto cfg = read_json(test::source_path(std::string(kDir) + "/config.json"));
  cfg["n_inner"] = nullptr;
  auto sd = create_model(cfg)->state_dict();
  EXPECT_EQ(sd["transformer.h.0.mlp.c_fc.weight"].sizes(), torch::IntArrayRef({64, 256}));
}

TEST(GPT2Model, TooLongSequenceIsAClearError) {
  auto model = load_model(test::source_path(kDir));
  ModelInput mi;
  mi.input_ids = torch::zeros({1, 65}, torch::kLong);  // n_positions = 64
  auto msg = error_of([&] { model->forward(mi); });
  EXPECT_NE(msg.find("n_positions"), std::string::npos) << msg;
}

TEST(GPT2Model, OutOfVocabularyIdIsAClearError) {
  auto model = load_model(test::source_path(kDir));
  ModelInput mi;
  mi.input_ids = torch::tensor({{1, 256}}, torch::kLong);  // vocab_size = 256
  auto msg = error_of([&] { model->forward(mi); });
  EXPECT_NE(msg.find("vocab_size"), std::string::npos) << msg;
}
