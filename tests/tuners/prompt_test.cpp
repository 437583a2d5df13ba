// Soft prompts (prompt tuning, p-tuning, prefix tuning / p-tuning v2) against Python peft's
// fixtures (logits, loss, saved keys and config fields), closed-form parameter counts, bit-exact
// save/load (the p-tuning encoder and the prefix projection are saved as their output), KV-cache
// decoding == full forward, and finite-difference gradients in float64.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using peft::test::source_path;
using peft::test::temp_dir;

namespace {

using peft::test::fixture_input;
using peft::test::max_diff;

PeftModelPtr peft_model(const std::string& model, torch::Dtype dt = torch::kFloat32) {
  return peft::test::fixture_peft_model(model, dt);
}

std::vector<std::string> json_keys(const nlohmann::json& j) {
  std::vector<std::string> k;
  for (auto& kv : j.items()) k.push_back(kv.key());
  std::sort(k.begin(), k.end());
  return k;
}

using peft::test::logits_of;

}  // namespace

struct FixtureCase {
  std::string model, method;
};

class PromptFixture : public ::testing::TestWithParam<FixtureCase> {};

TEST_P(PromptFixture, LoadsMatchesAndSavesBack) {
  auto [model, method] = GetParam();
  const std::string dir = source_path("tests/fixtures/peft/adapters/" + model + "/" + method);
  auto ref = load_safetensors(dir + "/reference.safetensors");
  auto pm = peft_model(model);
  pm->load_adapter(dir);
  auto in = fixture_input(model);
  torch::NoGradGuard ng;
  auto out = pm->forward(in);
  ASSERT_EQ(out.logits.sizes(), ref.at("logits").sizes());
  EXPECT_TRUE(torch::allclose(out.logits, ref.at("logits"), 1e-4, 1e-5)) << max_diff(out.logits, ref.at("logits"));
  EXPECT_NEAR(out.loss.item<double>(), ref.at("loss").item<double>(), 1e-5);
  // The caller's input is untouched (the adapter works on a copy).
  EXPECT_EQ(in.attention_mask.size(1), fixture_input(model).attention_mask.size(1));
  EXPECT_THROW(pm->merge(), Error);

  auto tmp = temp_dir("prompt_fixture_" + model + method);
  pm->save_adapter(tmp);
  peft::test::expect_same_saved_tensors(dir, tmp);
  auto cfg_theirs = read_json(dir + "/adapter_config.json"), cfg_ours = read_json(tmp + "/adapter_config.json");
  EXPECT_EQ(json_keys(cfg_theirs), json_keys(cfg_ours));
  for (auto& kv : cfg_theirs.items())
    if (kv.key() != "base_model_name_or_path") {
      EXPECT_EQ(kv.value(), cfg_ours[kv.key()]) << kv.key();
    }
}

INSTANTIATE_TEST_SUITE_P(All, PromptFixture,
                         ::testing::Values(FixtureCase{"llama", "prompt_tuning"}, FixtureCase{"llama", "prefix_tuning"},
                                           FixtureCase{"llama", "p_tuning"}, FixtureCase{"bert_cls", "prompt_tuning"},
                                           FixtureCase{"bert_cls", "prefix_tuning"}, FixtureCase{"bert_cls", "p_tuning"}),
                         [](const auto& info) { return info.param.model + "_" + info.param.method; });

struct PromptCase {
  std::string name, model, method;
  nlohmann::json options;
  int64_t expected_trainable;
};

std::vector<PromptCase> prompt_cases() {
  // llama: hidden 64, 4 heads, 2 kv heads (head_dim 16), 2 layers; bert_cls: hidden 64, 4 heads, 2 layers, 2 labels.
  const int64_t P = 4, head = 2 * 64 + 2;  // bert's classifier copy (modules_to_save)
  const int64_t mlp = (64 * 32 + 32) + (32 * 32 + 32) + (32 * 64 + 64);  // p-tuning encoder, hidden 32
  const int64_t lstm = 2 * 2 * (4 * 16 * 64 + 4 * 16 * 16 + 8 * 16) - 2 * 4 * 16 * 64 + 2 * 4 * 16 * 32 +
                       (32 * 32 + 32) + (32 * 64 + 64);  // biLSTM (2 layers, hidden 16) + mlp head
  return {
      {"prompt", "llama", "prompt-tuning", {{"num_virtual_tokens", P}}, P * 64},
      {"p_tuning_mlp", "llama", "p-tuning", {{"num_virtual_tokens", P}, {"encoder_hidden_size", 32}}, P * 64 + mlp},
      {"p_tuning_lstm", "llama", "p-tuning",
       {{"num_virtual_tokens", P}, {"encoder_hidden_size", 16}, {"encoder_reparameterization_type", "LSTM"}},
       P * 64 + lstm},
      {"prefix_v2", "llama", "p-tuning-v2", {{"num_virtual_tokens", P}}, P * 2 * 2 * 32},  // kv heads: token_dim 32
      {"prefix_projection", "llama", "prefix-tuning", {{"num_virtual_tokens", P}, {"encoder_hidden_size", 32}},
       P * 32 + (32 * 32 + 32) + (32 * 128 + 128)},
      {"bert_prompt", "bert_cls", "prompt-tuning", {{"num_virtual_tokens", P}}, P * 64 + head},
      {"bert_prefix", "bert_cls", "p-tuning-v2", {{"num_virtual_tokens", P}}, P * 2 * 2 * 64 + head},
      {"bert_p_tuning", "bert_cls", "p-tuning", {{"num_virtual_tokens", P}, {"encoder_hidden_size", 32}}, P * 64 + mlp + head},
  };
}

class PromptMethod : public ::testing::TestWithParam<PromptCase> {};

TEST_P(PromptMethod, TrainableCountAndSaveLoadBitExact) {
  auto c = GetParam();
  auto pm = peft_model(c.model);
  pm->add_adapter("default", method_config(c.method, c.options));
  EXPECT_EQ(pm->trainable_report().trainable, c.expected_trainable) << pm->trainable_report().to_string();
  int64_t n = 0;
  for (auto& t : pm->trainable_parameters()) n += t.numel();
  EXPECT_EQ(n, c.expected_trainable);
  {  // the classifier copy is perturbed so a wrong head would show
    torch::NoGradGuard ng;
    for (auto& [name, t] : pm->named_trainable_parameters())
      if (name.find("modules_to_save") != std::string::npos) t.add_(torch::randn_like(t) * 0.1);
  }
  auto in = fixture_input(c.model);
  auto out = logits_of(*pm, in);
  auto dir = temp_dir("prompt_roundtrip_" + c.name);
  pm->save_adapter(dir);
  auto saved = load_safetensors(dir + "/adapter_model.safetensors");
  EXPECT_TRUE(saved.count("prompt_embeddings"));
  auto pm2 = peft_model(c.model);
  pm2->load_adapter(dir);
  auto again = pm2->adapter_state_dict("default");
  ASSERT_EQ(saved.size(), again.size());
  for (auto& kv : saved) EXPECT_TRUE(torch::equal(kv.second, again.at(kv.first))) << kv.first;
  EXPECT_TRUE(torch::allclose(logits_of(*pm2, in), out, 0, 1e-6)) << max_diff(logits_of(*pm2, in), out);
  // Saving the loaded adapter gives the same file content.
  auto dir2 = temp_dir("prompt_roundtrip2_" + c.name);
  pm2->save_adapter(dir2);
  auto saved2 = load_safetensors(dir2 + "/adapter_model.safetensors");
  for (auto& kv : saved) EXPECT_TRUE(torch::equal(kv.second, saved2.at(kv.first))) << kv.first;
  EXPECT_EQ(read_json(dir + "/adapter_config.json"), read_json(dir2 + "/adapter_config.json"));
}

TEST_P(PromptMethod, GradientsMatchFiniteDifferences) {
  auto c = GetParam();
  auto pm = peft_model(c.model, torch::kFloat64);
  pm->add_adapter("default", method_config(c.method, c.options));
  pm->to(torch::kFloat64);
  auto in = fixture_input(c.model);
  peft::test::expect_gradients_match_finite_differences(*pm, in, c.name);
}

INSTANTIATE_TEST_SUITE_P(All, PromptMethod, ::testing::ValuesIn(prompt_cases()),
                         [](const auto& info) { return info.param.name; });

// Decoding one token at a time through the KV cache gives the full forward's logits: the
// virtual tokens / prefix enter the cache once, positions continue after them.
class PromptDecoding : public ::testing::TestWithParam<std::string> {};
TEST_P(PromptDecoding, IncrementalEqualsFullForward) {
  auto pm = peft_model("llama");
  pm->add_adapter("default", method_config(GetParam(), {{"num_virtual_tokens", 3}}));
  auto ids = torch::tensor({1, 45, 112, 7, 201, 33}, torch::kLong).unsqueeze(0);
  ModelInput full;
  full.input_ids = ids;
  auto ref = logits_of(*pm, full);
  const int64_t off = ref.size(1) - ids.size(1);  // virtual positions in front (prompt tuning)
  KVCache cache;
  // A prompt of 2 tokens, then one token at a time, with an attention mask over the real tokens.
  for (int64_t t = 0; t < ids.size(1);) {
    int64_t len = t == 0 ? 2 : 1;
    ModelInput step;
    step.input_ids = ids.slice(1, t, t + len);
    step.attention_mask = torch::ones({1, t + len}, torch::kLong);
    step.cache = &cache;
    auto lg = logits_of(*pm, step);
    ASSERT_EQ(lg.size(1), len + (t == 0 ? off : 0));
    auto want = ref.slice(1, off + t, off + t + len), got = lg.slice(1, lg.size(1) - len);
    EXPECT_LT(max_diff(got, want), 1e-5) << GetParam() << " step " << t;
    t += len;
  }
  EXPECT_EQ(cache.length(), 3 + ids.size(1));
}
INSTANTIATE_TEST_SUITE_P(All, PromptDecoding, ::testing::Values("prompt-tuning", "p-tuning", "prefix-tuning", "p-tuning-v2"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(PromptTuning, TextInitFromTokenIds) {
  auto pm = peft_model("llama");
  pm->add_adapter("default", method_config("prompt-tuning", {{"num_virtual_tokens", 5},
                                                              {"prompt_tuning_init", "TEXT"},
                                                              {"prompt_tuning_init_text", "hello"},
                                                              {"prompt_tuning_init_token_ids", {45, 112}}}));
  auto emb = pm->adapter_state_dict("default").at("prompt_embeddings");
  torch::NoGradGuard ng;
  auto want = pm->model->embed_tokens(torch::tensor({45, 112, 45, 112, 45}, torch::kLong).unsqueeze(0)).squeeze(0);
  EXPECT_TRUE(torch::equal(emb, want));
  // The ids are ours: they go to peft_cpp_config.json, adapter_config.json stays peft's.
  auto dir = temp_dir("prompt_text");
  pm->save_adapter(dir);
  EXPECT_FALSE(read_json(dir + "/adapter_config.json").contains("prompt_tuning_init_token_ids"));
  EXPECT_TRUE(read_json(dir + "/peft_cpp_config.json").contains("prompt_tuning_init_token_ids"));
  auto pm2 = peft_model("llama");
  EXPECT_THROW(pm2->add_adapter("x", method_config("prompt-tuning", {{"prompt_tuning_init", "TEXT"}})), Error);
  EXPECT_THROW(pm2->add_adapter("y", method_config("prompt-tuning", {{"num_virtual_tokens", 0}})), Error);
}

TEST(PromptTuning, CausalLabelsArePrefixedWithIgnore) {
  // Virtual positions get label -100: the last virtual token predicts the first real one, and
  // the loss is the plain causal loss over the real tokens.
  auto pm = peft_model("llama");
  pm->add_adapter("default", method_config("prompt-tuning", {{"num_virtual_tokens", 4}}));
  auto in = fixture_input("llama");
  torch::NoGradGuard ng;
  auto out = pm->forward(in);
  EXPECT_EQ(out.logits.size(1), in.input_ids.size(1) + 4);
  auto lab = torch::cat({torch::full({in.labels.size(0), 1}, -100, in.labels.options()), in.labels}, 1);
  auto manual = causal_lm_loss(out.logits.slice(1, 3), lab);
  EXPECT_NEAR(out.loss.item<double>(), manual.item<double>(), 1e-6);
}
