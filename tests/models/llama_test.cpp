// Llama logits against the transformers fixture (tests/fixtures/hf/models/llama, made with
// transformers 4.37.2 LlamaForCausalLM, eager attention; padded batch included).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/io.h"
#include "peft/model.h"
#include "test_util.h"

using namespace peft;

namespace {
void expect_close(const torch::Tensor& a, const torch::Tensor& b, double atol, double rtol, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  auto diff = (a - b).abs();
  auto tol = atol + rtol * b.abs();
  EXPECT_TRUE((diff <= tol).all().item<bool>()) << what << ": max abs diff " << diff.max().item<double>();
}

void check_fixture(const std::string& name) {
  std::string dir = test::source_path("tests/fixtures/hf/models/" + name);
  auto model = load_model(dir);
  model->eval();
  auto in = load_safetensors(dir + "/inputs.safetensors");
  auto ref = load_safetensors(dir + "/reference.safetensors");
  ModelInput mi;
  mi.input_ids = in["input_ids"];
  mi.attention_mask = in["attention_mask"];
  mi.labels = in["labels"];
  mi.output_hidden_states = true;
  torch::NoGradGuard ng;
  auto out = model->forward(mi);
  expect_close(out.logits, ref["logits"], 1e-5, 1e-4, name + " logits");
  EXPECT_NEAR(out.loss.item<double>(), ref["loss"].item<double>(), 1e-5) << name;
  for (size_t i = 0; i < out.hidden_states.size(); ++i) {
    auto key = "hidden_states." + std::to_string(i);
    ASSERT_TRUE(ref.count(key)) << key;
    expect_close(out.hidden_states[i], ref[key], 1e-5, 1e-4, name + " " + key);
  }
}
}  // namespace

TEST(LlamaModel, MatchesTransformersFixture) { check_fixture("llama"); }

TEST(LlamaModel, KVCacheMatchesFullForward) {
  auto model = load_model(test::source_path("tests/fixtures/hf/models/llama"));
  model->eval();
  torch::NoGradGuard ng;
  auto ids = torch::tensor({{1, 45, 112, 7, 201, 33}}, torch::kLong);
  ModelInput full;
  full.input_ids = ids;
  auto ref = model->forward(full).logits;
  KVCache cache;
  ModelInput a;
  a.input_ids = ids.slice(1, 0, 4);
  a.cache = &cache;
  auto l1 = model->forward(a).logits;
  ModelInput b;
  b.input_ids = ids.slice(1, 4);
  b.cache = &cache;
  auto l2 = model->forward(b).logits;
  EXPECT_EQ(cache.length(), 6);
  EXPECT_TRUE(torch::allclose(torch::cat({l1, l2}, 1), ref, 1e-5, 1e-5));
}

TEST(LlamaModel, RejectsBadConfig) {
  auto cfg = read_json(test::source_path("tests/fixtures/hf/models/llama/config.json"));
  cfg["hidden_act"] = "bogus_act";
  EXPECT_THROW(create_model(cfg), peft::Error);
  cfg = read_json(test::source_path("tests/fixtures/hf/models/llama/config.json"));
  cfg.erase("hidden_size");
  try {
    create_model(cfg);
    FAIL() << "expected an error";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("hidden_size"), std::string::npos) << e.what();
  }
}

TEST(LlamaModel, WrongShapeInCheckpointNamesTensor) {
  auto dir = test::temp_dir("llama_bad");
  auto w = load_safetensors(test::source_path("tests/fixtures/hf/models/llama/model.safetensors"));
  w["model.norm.weight"] = torch::ones({63});
  save_safetensors(dir + "/model.safetensors", w);
  write_json(dir + "/config.json", read_json(test::source_path("tests/fixtures/hf/models/llama/config.json")));
  try {
    load_model(dir);
    FAIL() << "expected an error";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.norm.weight"), std::string::npos) << e.what();
  }
}
