// Bottleneck adapters (Houlsby, Pfeiffer, parallel, own LayerNorm, AdapterDrop): identity at
// init, closed-form parameter counts, placement through roles, bit-exact save/load in our
// documented format, no merge, finite-difference gradients in float64.
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

using peft::test::fixture_input;
using peft::test::logits_of;
using peft::test::max_diff;
using peft::test::randomize;

namespace {
PeftModelPtr peft_model(const std::string& model, torch::Dtype dt = torch::kFloat32) {
  return peft::test::fixture_peft_model(model, dt);
}
}  // namespace

struct BottleneckCase {
  std::string name, model, method;
  nlohmann::json options;
  int64_t expected_trainable;
  std::vector<std::string> targeted;
};

std::vector<BottleneckCase> bottleneck_cases() {
  // llama: hidden 64, FFN 128, 2 layers; reduction_factor 16 -> b = 4.
  // One sequential adapter on a 64-wide output: down 4*64 + 4, up 64*4 + 64 = 580.
  const int64_t one = 4 * 64 + 4 + 64 * 4 + 64;
  const std::string L0 = "model.layers.0.", L1 = "model.layers.1.";
  return {
      {"houlsby", "llama", "houlsby", nlohmann::json::object(), 4 * one,
       {L0 + "self_attn.o_proj", L0 + "mlp.down_proj", L1 + "self_attn.o_proj", L1 + "mlp.down_proj"}},
      {"pfeiffer", "llama", "pfeiffer", nlohmann::json::object(), 2 * one, {L0 + "mlp.down_proj", L1 + "mlp.down_proj"}},
      {"parallel", "llama", "parallel-adapter", nlohmann::json::object(), 2 * one, {L0 + "mlp", L1 + "mlp"}},
      {"houlsby_ln", "llama", "houlsby", {{"adapter_layernorm", true}}, 4 * (one + 2 * 64),
       {L0 + "self_attn.o_proj", L0 + "mlp.down_proj", L1 + "self_attn.o_proj", L1 + "mlp.down_proj"}},
      {"adapter_drop", "llama", "houlsby", {{"adapter_drop_layers", 1}, {"non_linearity", "gelu"}}, 2 * one,
       {L1 + "self_attn.o_proj", L1 + "mlp.down_proj"}},
      {"size8_silu", "llama", "pfeiffer", {{"bottleneck_size", 8}, {"non_linearity", "silu"}},
       2 * (8 * 64 + 8 + 64 * 8 + 64), {L0 + "mlp.down_proj", L1 + "mlp.down_proj"}},
      // BERT's FFN output "output.dense" also names attention.output.dense: Pfeiffer keeps only the FFN's.
      {"bert_pfeiffer", "bert_cls", "pfeiffer", nlohmann::json::object(), 2 * one,
       {"bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"}},
      {"bert_houlsby", "bert_cls", "houlsby", nlohmann::json::object(), 4 * one,
       {"bert.encoder.layer.0.attention.output.dense", "bert.encoder.layer.0.output.dense",
        "bert.encoder.layer.1.attention.output.dense", "bert.encoder.layer.1.output.dense"}},
  };
}

class Bottleneck : public ::testing::TestWithParam<BottleneckCase> {};

TEST_P(Bottleneck, IdentityAtInitCountAndPlacement) {
  auto c = GetParam();
  auto pm = peft_model(c.model);
  auto in = fixture_input(c.model);
  auto base = logits_of(*pm, in);
  pm->add_adapter("default", method_config(c.method, c.options));
  auto rep = pm->trainable_report();
  EXPECT_EQ(rep.trainable, c.expected_trainable) << rep.to_string();
  EXPECT_EQ(rep.by_method["bottleneck"], c.expected_trainable);
  peft::test::expect_targeted(*pm, c.targeted);
  peft::test::expect_identity_at_init(*pm, in, base, /*mergeable=*/false);  // non-linear
}

TEST_P(Bottleneck, SaveLoadBitExact) {
  auto c = GetParam();
  auto pm = peft_model(c.model);
  pm->add_adapter("default", method_config(c.method, c.options));
  randomize(*pm, 0.2);
  auto in = fixture_input(c.model);
  auto dir = peft::test::expect_save_load_bit_exact(*pm, c.model, in, "bottleneck_" + c.name);
  auto cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "BOTTLENECK");
  EXPECT_EQ(cfg["peft_cpp_format_version"], 1);
  EXPECT_TRUE(cfg["target_modules"].is_array());
  auto saved = load_safetensors(dir + "/adapter_model.safetensors");
  EXPECT_TRUE(saved.count("base_model.model." + c.targeted[0] + ".adapter_down.weight")) << c.targeted[0];
  EXPECT_TRUE(saved.count("base_model.model." + c.targeted[0] + ".adapter_up.bias"));
}

TEST_P(Bottleneck, GradientsMatchFiniteDifferences) {
  auto c = GetParam();
  auto pm = peft_model(c.model, torch::kFloat64);
  pm->add_adapter("default", method_config(c.method, c.options));
  pm->to(torch::kFloat64);
  randomize(*pm, 0.3);
  auto in = fixture_input(c.model);
  peft::test::expect_gradients_match_finite_differences(*pm, in, c.name);
}

INSTANTIATE_TEST_SUITE_P(All, Bottleneck, ::testing::ValuesIn(bottleneck_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(BottleneckErrors, ClearMessages) {
  // (BERT's parallel adapter wraps its `mlp` view of the FFN: encoder_families_test.cpp.)
  auto pm = peft_model("bert_cls");
  EXPECT_THROW(pm->add_adapter("a", method_config("bottleneck", {{"adapter_type", "serial"}})), Error);
  EXPECT_THROW(pm->add_adapter("b", method_config("bottleneck", {{"non_linearity", "nope"}})), Error);
  EXPECT_THROW(pm->add_adapter("c", method_config("bottleneck", {{"peft_cpp_format_version", 2}})), Error);
  EXPECT_THROW(pm->add_adapter("d", method_config("bottleneck", {{"adapter_drop_layers", 2}})), Error);
  // The parallel adapter scales by `scaling` (He et al.: 4).
  auto pl = peft_model("llama");
  pl->add_adapter("x", method_config("parallel-adapter", {{"init_weights", false}}));
  auto in = fixture_input("llama");
  auto base = [&] {
    pl->disable_adapters(true);
    auto l = logits_of(*pl, in);
    pl->disable_adapters(false);
    return l;
  }();
  pl->set_scale("x", 0.0);
  EXPECT_TRUE(torch::equal(logits_of(*pl, in), base));
}

// AdapterDrop at training time: each adapter is skipped with probability p per training
// forward (so some forwards give the base, some the full adapter output), never in eval.
TEST(BottleneckAdapterDrop, StochasticWhileTrainingOnly) {
  auto pm = peft_model("llama");
  auto in = fixture_input("llama");
  auto base = logits_of(*pm, in);
  pm->add_adapter("default", method_config("pfeiffer", {{"adapter_drop_prob", 0.5}}));
  randomize(*pm, 0.3);
  pm->eval();
  auto full = logits_of(*pm, in);
  ASSERT_GT(max_diff(full, base), 1e-4);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(torch::equal(logits_of(*pm, in), full));
  pm->train();
  torch::manual_seed(1);
  int n_base = 0, n_full = 0, n_other = 0;
  for (int i = 0; i < 40; ++i) {
    auto out = logits_of(*pm, in);
    if (torch::equal(out, base)) ++n_base;
    else if (torch::equal(out, full)) ++n_full;
    else ++n_other;  // one of the two layers' adapters dropped
  }
  // Two adapters kept independently with probability 1/2: about 10 / 10 / 20 of 40.
  EXPECT_GT(n_base, 2);
  EXPECT_GT(n_full, 2);
  EXPECT_GT(n_other, 8);
  EXPECT_THROW(pm->add_adapter("bad", method_config("pfeiffer", {{"adapter_drop_prob", 1.0}})), Error);
}
