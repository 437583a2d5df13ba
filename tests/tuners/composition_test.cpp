// Composition blocks (docs/MULTI_ADAPTER.md; AdapterHub's semantics): Average and Fuse
// (AdapterFusion) as adapters over bottleneck adapters, Parallel as a repeated mixed-adapter
// batch. References: identities with closed forms (a block over one adapter, or with weights
// (1, 0), is that adapter; a fusion whose query is zero weighs its adapters equally, so with
// V = I it is their average), float64 finite differences for the fusion's gradients, save ->
// load bit for bit, and Parallel's rows against each adapter run alone.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/composition.h"
#include "peft/error.h"
#include "tuners/tuner_test_util.h"

namespace peft::test {
namespace {

// Two random Pfeiffer adapters "a", "b" (and optionally a LoRA) on the tiny Llama fixture.
PeftModelPtr with_adapters(torch::Dtype dt = torch::kFloat32) {
  auto pm = fixture_peft_model("llama", dt);
  torch::manual_seed(1);
  pm->add_adapter("a", method_config("pfeiffer", {{"init_weights", false}, {"reduction_factor", 4}}));
  pm->add_adapter("b", method_config("pfeiffer", {{"init_weights", false}, {"reduction_factor", 4}}));
  pm->eval();
  return pm;
}

torch::Tensor logits_with(PeftModel& pm, const std::vector<std::string>& active, const ModelInput& in) {
  pm.set_adapter(active);
  return logits_of(pm, in);
}

void zero_query(PeftModel& pm, const std::string& fusion) {
  torch::NoGradGuard ng;
  for (auto& kv : pm.named_parameters())
    if (kv.key().find("fusion_query." + fusion + ".") != std::string::npos) kv.value().zero_();
}

TEST(Composition, AverageWithOneNonzeroWeightIsThatAdapter) {
  auto pm = with_adapters();
  auto in = fixture_input("llama");
  const auto a = logits_with(*pm, {"a"}, in), b = logits_with(*pm, {"b"}, in);
  ASSERT_GT(max_diff(a, b), 1e-3);
  pm->add_adapter("avg_a", {{"peft_type", "ADAPTER_AVERAGE"}, {"adapters", {"a", "b"}}, {"weights", {1.0, 0.0}}});
  pm->add_adapter("avg_b", {{"peft_type", "ADAPTER_AVERAGE"}, {"adapters", "a,b"}, {"weights", {0.0, 3.0}}});  // normalized
  EXPECT_LE(max_diff(logits_with(*pm, {"a", "b", "avg_a"}, in), a), 1e-6);
  EXPECT_LE(max_diff(logits_with(*pm, {"a", "b", "avg_b"}, in), b), 1e-6);
  // Equal weights: neither adapter alone, nor their Stack.
  pm->add_adapter("avg", {{"peft_type", "ADAPTER_AVERAGE"}});  // adapters: every bottleneck adapter
  EXPECT_EQ(pm->adapter("avg").config["adapters"], nlohmann::json({"a", "b"}));
  auto mean = logits_with(*pm, {"a", "b", "avg"}, in);
  EXPECT_GT(max_diff(mean, a), 1e-4);
  EXPECT_GT(max_diff(mean, logits_with(*pm, {"a", "b"}, in)), 1e-4);
  EXPECT_EQ(pm->adapter_state_dict("avg").size(), 0u) << "an average has no tensors";
}

TEST(Composition, FuseWithZeroQueryIsTheEqualAverageAndOverOneAdapterIsIt) {
  auto pm = with_adapters();
  auto in = fixture_input("llama");
  pm->add_adapter("fusion", {{"peft_type", "ADAPTER_FUSION"}, {"adapters", {"a", "b"}}});
  pm->add_adapter("avg", {{"peft_type", "ADAPTER_AVERAGE"}, {"adapters", {"a", "b"}}});
  // At init V = I: the fusion is a softmax-weighted average of the adapters' outputs.
  auto fused = logits_with(*pm, {"a", "b", "fusion"}, in), mean = logits_with(*pm, {"a", "b", "avg"}, in);
  EXPECT_LE(max_diff(fused, mean), 1e-2) << "small Q, K: nearly equal weights";
  zero_query(*pm, "fusion");  // scores (Q h)·(K y_i) = 0: weights exactly 1/2
  EXPECT_LE(max_diff(logits_with(*pm, {"a", "b", "fusion"}, in), mean), 1e-6);
  // Softmax over one adapter is 1: V y = y, the adapter itself, whatever Q and K.
  pm->add_adapter("fuse_a", {{"peft_type", "ADAPTER_FUSION"}, {"adapters", {"a"}}, {"temperature", 0.5}});
  EXPECT_LE(max_diff(logits_with(*pm, {"a", "fuse_a"}, in), logits_with(*pm, {"a"}, in)), 1e-6);
}

TEST(Composition, StackOfLanguageAdapterAndFusionRunsInActivationOrder) {
  auto pm = with_adapters();
  auto in = fixture_input("llama");
  torch::manual_seed(2);
  pm->add_adapter("lang", method_config("pfeiffer", {{"init_weights", false}, {"reduction_factor", 4}}));
  pm->add_adapter("fuse_a", {{"peft_type", "ADAPTER_FUSION"}, {"adapters", {"a"}}});
  // Stack(lang, Fuse(a)) with Fuse(a) == a: Stack(lang, a), and not Stack(a, lang).
  auto got = logits_with(*pm, {"lang", "a", "fuse_a"}, in);
  EXPECT_LE(max_diff(got, logits_with(*pm, {"lang", "a"}, in)), 1e-6);
  EXPECT_GT(max_diff(got, logits_with(*pm, {"a", "lang"}, in)), 1e-4);
}

TEST(Composition, FusionGradientsMatchFiniteDifferencesWithTheAdaptersFrozen) {
  auto pm = with_adapters(torch::kDouble);
  auto in = fixture_input("llama");
  pm->add_adapter("fusion", {{"peft_type", "ADAPTER_FUSION"}, {"adapters", {"a", "b"}}, {"init_weights", false}});
  pm->set_adapter({"a", "b", "fusion"});
  pm->set_frozen("a");
  pm->set_frozen("b");
  auto named = pm->named_trainable_parameters();
  ASSERT_EQ(named.size(), 6u * pm->adapter("fusion").targeted.size());
  for (auto& [n, t] : named) EXPECT_NE(n.find(".fusion_"), std::string::npos) << n << " trains";
  pm->train();  // no dropout in these configs
  expect_gradients_match_finite_differences(*pm, in, "fusion");
}

TEST(Composition, FusionSavesAndLoadsBitExact) {
  auto pm = with_adapters();
  auto in = fixture_input("llama");
  pm->add_adapter("fusion", {{"peft_type", "ADAPTER_FUSION"}, {"adapters", {"a", "b"}}, {"init_weights", false}});
  auto want = logits_with(*pm, {"a", "b", "fusion"}, in);
  const auto dir = temp_dir("composition_fusion");
  for (const char* n : {"a", "b", "fusion"}) pm->save_adapter(dir + "/" + n, n);
  auto pm2 = fixture_peft_model("llama");
  EXPECT_THROW(pm2->load_adapter(dir + "/fusion", "fusion"), Error) << "its adapters are not loaded yet";
  EXPECT_EQ(pm2->adapters().count("fusion"), 0u);
  for (const char* n : {"a", "b", "fusion"}) pm2->load_adapter(dir + "/" + n, n);
  expect_same_adapter(*pm, *pm2, "fusion");
  EXPECT_TRUE(torch::equal(logits_with(*pm2, {"a", "b", "fusion"}, in), want));
}

TEST(Composition, ParallelRowsEqualEachAdapterAlone) {
  auto pm = with_adapters();
  pm->add_adapter("lora", method_config("lora", {{"init_lora_weights", false}}));
  auto in = fixture_input("llama");
  const int64_t B = in.input_ids.size(0);
  const std::vector<std::string> names = {"a", PeftModel::kBaseRow, "lora"};
  torch::NoGradGuard ng;
  auto out = parallel_forward(*pm, in, names);
  ASSERT_EQ(out.logits.size(0), 3 * B);
  double loss_sum = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    pm->disable_adapters(names[i] == PeftModel::kBaseRow);
    if (names[i] != PeftModel::kBaseRow) pm->set_adapter(names[i]);
    auto alone = pm->forward(in);
    pm->disable_adapters(false);
    EXPECT_LE(max_diff(out.logits.narrow(0, i * B, B), alone.logits), 1e-5) << names[i];
    loss_sum += alone.loss.item<double>();
  }
  EXPECT_NEAR(out.loss.item<double>(), loss_sum / 3, 1e-5) << "labels repeated: the mean over every adapter's rows";
  EXPECT_THROW(parallel_forward(*pm, in, {}), Error);
}

TEST(Composition, BadBlocksAreRefusedByName) {
  auto pm = with_adapters();
  pm->add_adapter("lora", method_config("lora"));
  auto expect_error = [&](const nlohmann::json& cfg, const std::string& needle) {
    try {
      pm->add_adapter("bad", cfg);
      ADD_FAILURE() << "accepted " << cfg.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_EQ(pm->adapters().count("bad"), 0u);
  };
  expect_error({{"peft_type", "ADAPTER_FUSION"}, {"adapters", {"a", "nope"}}}, "'nope', which is not loaded");
  expect_error({{"peft_type", "ADAPTER_FUSION"}, {"adapters", {"a", "lora"}}}, "compose bottleneck adapters");
  expect_error({{"peft_type", "ADAPTER_FUSION"}, {"adapters", {"a"}}, {"temperature", 0}}, "temperature");
  expect_error({{"peft_type", "ADAPTER_AVERAGE"}, {"adapters", {"a", "b"}}, {"weights", {1.0}}}, "1 weights for 2");
  expect_error({{"peft_type", "ADAPTER_AVERAGE"}, {"adapters", {"a", "b"}}, {"weights", {1.0, -1.0}}}, "sum to 0");
  // A block cannot act per row of a mixed-adapter batch.
  pm->add_adapter("fusion", {{"peft_type", "ADAPTER_FUSION"}, {"adapters", {"a", "b"}}});
  auto in = fixture_input("llama");
  std::vector<std::string> rows(in.input_ids.size(0), "fusion");
  EXPECT_THROW(pm->forward(in, rows), Error);
}

}  // namespace
}  // namespace peft::test
