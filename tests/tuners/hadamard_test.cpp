// Hadamard adapter: identity at init, 2 x hidden parameters per attention output, placement
// through the "attn.o" role, merge == unmerged (and exact unmerge) where the projection has a
// bias, a clear error where it has none, bit-exact save/load, float64 finite-difference gradients.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using namespace peft::test;

struct HadamardCase {
  std::string name, model;
  int64_t expected_trainable;
  std::vector<std::string> targeted;
  bool mergeable_with_bias;  // the wrapped projection has a bias
};

std::vector<HadamardCase> hadamard_cases() {
  // Every fixture: hidden 64, 2 layers; w and b per attention output: 2 * 64 per layer.
  const int64_t per_layer = 2 * 64;
  return {
      {"llama", "llama", 2 * per_layer, {"model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj"}, false},
      {"gpt2", "gpt2", 2 * per_layer, {"transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"}, true},
      {"bert", "bert_cls", 2 * per_layer,
       {"bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.1.attention.output.dense"}, true},
  };
}

class Hadamard : public ::testing::TestWithParam<HadamardCase> {};

TEST_P(Hadamard, IdentityAtInitCountAndPlacement) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model);
  auto in = fixture_input(c.model);
  auto base = logits_of(*pm, in);
  pm->add_adapter("default", method_config("hadamard"));
  EXPECT_EQ(pm->trainable_report().by_method["hadamard"], c.expected_trainable);
  expect_targeted(*pm, c.targeted);
  expect_identity_at_init(*pm, in, base, /*mergeable=*/true);
}

TEST_P(Hadamard, MergeEqualsUnmerged) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model);
  auto in = fixture_input(c.model);
  auto base = logits_of(*pm, in);
  pm->add_adapter("default", method_config("hadamard", {{"init_weights", false}}));
  auto out = logits_of(*pm, in);
  if (!c.mergeable_with_bias) {  // b != 0 and no bias to absorb it
    EXPECT_THROW(pm->merge(), Error);
    pm->unmerge();
    EXPECT_TRUE(torch::equal(logits_of(*pm, in), out));
    // With b = 0 the scale alone folds into the weight.
    torch::NoGradGuard ng;
    for (auto& [name, t] : pm->named_trainable_parameters())
      if (name.find("hadamard_b") != std::string::npos) t.zero_();
    out = logits_of(*pm, in);
  }
  pm->merge();
  EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-5);
  pm->unmerge();
  EXPECT_TRUE(torch::equal(logits_of(*pm, in), out));  // restored bit for bit
  pm->disable_adapters();
  EXPECT_TRUE(torch::equal(logits_of(*pm, in), base));
}

TEST_P(Hadamard, SaveLoadBitExact) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model);
  pm->add_adapter("default", method_config("hadamard"));
  randomize(*pm, 0.3);
  auto dir = expect_save_load_bit_exact(*pm, c.model, fixture_input(c.model), "hadamard_" + c.name);
  auto cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "HADAMARD");
  EXPECT_EQ(cfg["peft_cpp_format_version"], 1);
  auto saved = load_safetensors(dir + "/adapter_model.safetensors");
  EXPECT_EQ(saved.at("base_model.model." + c.targeted[0] + ".hadamard_w").sizes(), torch::IntArrayRef({64}));
  EXPECT_TRUE(saved.count("base_model.model." + c.targeted[1] + ".hadamard_b"));
}

TEST_P(Hadamard, GradientsMatchFiniteDifferences) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model, torch::kFloat64);
  pm->add_adapter("default", method_config("hadamard"));
  pm->to(torch::kFloat64);
  randomize(*pm, 0.5);
  expect_gradients_match_finite_differences(*pm, fixture_input(c.model), c.name);
}

INSTANTIATE_TEST_SUITE_P(All, Hadamard, ::testing::ValuesIn(hadamard_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(HadamardErrors, ClearMessages) {
  auto pm = fixture_peft_model("llama");
  EXPECT_THROW(pm->add_adapter("a", method_config("hadamard", {{"peft_cpp_format_version", 2}})), Error);
  try {  // an activation is not a Linear
    pm->add_adapter("b", method_config("hadamard", {{"target_modules", {"act_fn"}}}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Linear"), std::string::npos) << e.what();
  }
}
