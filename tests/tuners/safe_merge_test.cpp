// PeftModel::merge(safe_merge) (peft's safe_merge): a broken adapter (a NaN in one LoRA factor)
// is refused with an error naming the adapter and the module, and every base weight is left bit
// for bit as it was; a sound adapter merges exactly as without the check; without the check the
// NaN goes into the weights, as in peft.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "peft/tuner.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using namespace peft::test;

namespace {
std::map<std::string, torch::Tensor> base_weights(PeftModel& pm) {
  std::map<std::string, torch::Tensor> w;
  for (auto& item : pm.model->named_parameters())
    if (!item.value().requires_grad()) w[item.key()] = item.value().detach().clone();
  return w;
}
}  // namespace

TEST(SafeMerge, BrokenAdapterIsRefusedAndTheBaseRestored) {
  auto pm = fixture_peft_model("llama");
  pm->add_adapter("default", method_config("lora", {{"target_modules", {"q_proj", "v_proj"}}}));
  randomize(*pm, 0.2);
  auto before = base_weights(*pm);
  {
    torch::NoGradGuard ng;
    auto named = pm->named_trainable_parameters();
    // A NaN in the last LoRA B factor: the layers merged before it must be restored too.
    named.back().second.view({-1})[0] = std::numeric_limits<float>::quiet_NaN();
  }
  std::string err = error_of([&] { pm->merge(/*safe_merge=*/true); });
  EXPECT_NE(err.find("safe_merge"), std::string::npos) << err;
  EXPECT_NE(err.find("'default'"), std::string::npos) << err;
  EXPECT_NE(err.find("proj"), std::string::npos) << err;
  auto after = base_weights(*pm);
  ASSERT_EQ(after.size(), before.size());
  for (auto& [k, v] : before) EXPECT_TRUE(torch::equal(v, after.at(k))) << k;
  for (auto& kv : pm->tuner_layers()) EXPECT_TRUE(kv.second->merged_adapters().empty()) << kv.first;
  // Without the check the NaN is merged (peft's default).
  pm->merge();
  bool nan = false;
  for (auto& [k, v] : base_weights(*pm)) nan = nan || torch::isnan(v).any().item<bool>();
  EXPECT_TRUE(nan);
}

TEST(SafeMerge, SoundAdapterMergesAsWithoutTheCheck) {
  auto make = [] {
    torch::manual_seed(4);
    auto pm = fixture_peft_model("llama");
    pm->add_adapter("default", method_config("lora", {{"target_modules", {"q_proj", "v_proj"}}}));
    randomize(*pm, 0.2);
    return pm;
  };
  auto a = make(), b = make();
  auto in = fixture_input("llama");
  auto unmerged = logits_of(*a, in);
  a->merge(true);
  b->merge(false);
  auto wa = base_weights(*a), wb = base_weights(*b);
  for (auto& [k, v] : wa) EXPECT_TRUE(torch::equal(v, wb.at(k))) << k;
  EXPECT_LT(max_diff(logits_of(*a, in), unmerged), 1e-4);
}
