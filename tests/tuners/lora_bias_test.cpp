// LoRA's `bias` = "all" / "lora_only" (peft's LoraConfig.bias): peft's files load as peft loads
// them (tests/fixtures/wave2/adapters/qwen2/lora_bias_*: `<module>.base_layer.bias` under a
// wrapped layer, the plain name elsewhere; lora_only files hold no bias), the biases train, a
// merge keeps them, and our folder reloads to the trained model (lora_only included: a
// deliberate difference, see src/tuners/lora_bias.h).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"
#include "tuners/wave2_util.h"

using namespace peft;
using namespace peft::test;

namespace {

/// One SGD step on every trainable tensor (lr 0.5) from the loss on `in`.
void sgd_step(PeftModel& pm, const ModelInput& in) {
  pm.train();
  auto params = pm.trainable_parameters();
  for (auto& p : params) p.mutable_grad() = torch::Tensor();
  pm.forward(in).loss.backward();
  torch::NoGradGuard ng;
  for (auto& p : params) {
    ASSERT_TRUE(p.grad().defined());
    p.sub_(0.5 * p.grad());
  }
  pm.eval();
}

std::set<std::string> bias_names(const std::vector<std::pair<std::string, torch::Tensor>>& named) {
  std::set<std::string> out;
  for (auto& kv : named)
    if (kv.first.find("bias") != std::string::npos) out.insert(kv.first);
  return out;
}

/// qwen2 is the model side's (q/k/v biases); skipped until this branch loads it.
PeftModelPtr qwen2_or_skip() {
  try {
    return wave2_peft_model("qwen2");
  } catch (const Error& e) {
    return nullptr;
  }
}

/// Trains one step, saves, reloads into a fresh base and expects the trained logits back; the
/// saved folder has `keys` exactly.
void expect_trained_round_trip(PeftModel& pm, const std::function<PeftModelPtr()>& fresh, const ModelInput& in,
                               const std::string& tag) {
  auto before = logits_of(pm, in);
  sgd_step(pm, in);
  auto trained = logits_of(pm, in);
  EXPECT_GT(max_diff(trained, before), 1e-4) << tag;
  auto dir = temp_dir(tag);
  pm.save_adapter(dir);
  auto pm2 = fresh();
  pm2->load_adapter(dir);
  EXPECT_TRUE(torch::equal(logits_of(*pm2, in), trained)) << tag << " " << max_diff(logits_of(*pm2, in), trained);
  auto merged = pm2->merge_and_unload();
  torch::NoGradGuard ng;
  EXPECT_LT(max_diff(merged->forward(in).logits, trained), 1e-5) << tag << " merged";
}

}  // namespace

// bias = "all" on GPT-2 (every Linear and LayerNorm has a bias): all of them train; a wrapped
// layer's is saved as `.base_layer.bias`, the others under their plain names.
TEST(LoraBias, AllTrainsAndSavesEveryBias) {
  auto pm = wave2_peft_model("gpt2");
  pm->add_adapter("default", method_config("lora", {{"r", 4}, {"bias", "all"}}));
  std::set<std::string> want;
  for (auto& p : pm->model->named_parameters())
    if (p.key().find("bias") != std::string::npos) want.insert("base_model.model." + p.key());
  EXPECT_EQ(bias_names(pm->named_trainable_parameters()), want);
  randomize(*pm, 0.1);
  auto in = wave2_input("gpt2");
  expect_trained_round_trip(*pm, [] { return wave2_peft_model("gpt2"); }, in, "bias_all");
  auto saved = pm->adapter_state_dict("default");
  EXPECT_TRUE(saved.count("base_model.model.transformer.h.0.attn.c_attn.base_layer.bias"));
  EXPECT_TRUE(saved.count("base_model.model.transformer.h.0.ln_1.bias"));
  EXPECT_TRUE(saved.count("base_model.model.transformer.h.1.mlp.c_proj.bias"));
  EXPECT_FALSE(saved.count("base_model.model.transformer.h.0.attn.c_attn.bias"));
}

// bias = "lora_only": the wrapped layers' biases train and (unlike peft 0.13.2) are saved.
TEST(LoraBias, LoraOnlyTrainsAndSavesTheWrappedBiases) {
  auto pm = wave2_peft_model("gpt2");
  pm->add_adapter("default", method_config("lora", {{"r", 4}, {"bias", "lora_only"}, {"target_modules", {"c_fc"}}}));
  EXPECT_EQ(bias_names(pm->named_trainable_parameters()),
            (std::set<std::string>{"base_model.model.transformer.h.0.mlp.c_fc.base_layer.bias",
                                   "base_model.model.transformer.h.1.mlp.c_fc.base_layer.bias"}));
  randomize(*pm, 0.1);
  expect_trained_round_trip(*pm, [] { return wave2_peft_model("gpt2"); }, wave2_input("gpt2"), "bias_lora_only");
}

TEST(LoraBias, RefusesOtherValues) {
  auto pm = wave2_peft_model("gpt2");
  auto err = error_of([&] { pm->add_adapter("default", method_config("lora", {{"bias", "some"}})); });
  EXPECT_NE(err.find("'bias'"), std::string::npos) << err;
}

// peft's bias = "all" folder: its biases replace the base ones, the LoRA delta adds on top, a
// merge keeps them; our folder has exactly peft's keys.
TEST(LoraBias, Qwen2AllMatchesPeft) {
  auto pm = qwen2_or_skip();
  if (!pm) GTEST_SKIP() << "the qwen2 base (q/k/v biases) does not load in this branch yet (model side)";
  const std::string dir = wave2_path("adapters/qwen2/lora_bias_all");
  auto ref = load_safetensors(dir + "/reference.safetensors");
  pm->load_adapter(dir);
  expect_reference_outputs(*pm, "qwen2", ref, "", "lora_bias_all");
  auto tmp = temp_dir("qwen2_bias_all");
  pm->save_adapter(tmp);
  expect_same_saved_tensors(dir, tmp);
  expect_same_config(read_json(dir + "/adapter_config.json"), read_json(tmp + "/adapter_config.json"), "lora_bias_all");
  pm->merge();
  expect_reference_outputs(*pm, "qwen2", ref, "merged_", "lora_bias_all");
  auto fresh = wave2_peft_model("qwen2");  // a base without merge round-off, as the reload's
  fresh->load_adapter(dir, "default", /*trainable=*/true);
  expect_trained_round_trip(*fresh, [] { return wave2_peft_model("qwen2"); }, wave2_input("qwen2"), "qwen2_all_trained");
}

// peft's lora_only folder holds no bias: it loads with the base biases (peft's reference); ours
// adds the trained wrapped biases, and reloading gives the trained model.
TEST(LoraBias, Qwen2LoraOnlyMatchesPeft) {
  auto pm = qwen2_or_skip();
  if (!pm) GTEST_SKIP() << "the qwen2 base (q/k/v biases) does not load in this branch yet (model side)";
  const std::string dir = wave2_path("adapters/qwen2/lora_bias_lora_only");
  auto ref = load_safetensors(dir + "/reference.safetensors");
  pm->load_adapter(dir);
  expect_reference_outputs(*pm, "qwen2", ref, "", "lora_only");
  pm->merge();
  expect_reference_outputs(*pm, "qwen2", ref, "merged_", "lora_only");
  pm->unmerge();
  auto tmp = temp_dir("qwen2_lora_only");
  pm->save_adapter(tmp);
  auto theirs = tensor_shapes(dir + "/adapter_model.safetensors"), ours = tensor_shapes(tmp + "/adapter_model.safetensors");
  for (auto& kv : theirs) EXPECT_EQ(ours[kv.first], kv.second) << kv.first;
  std::set<std::string> extra;
  for (auto& kv : ours)
    if (!theirs.count(kv.first)) extra.insert(kv.first);
  std::set<std::string> want;
  for (std::string l : {"0", "1"})
    for (std::string m : {"q_proj", "v_proj"}) want.insert("base_model.model.model.layers." + l + ".self_attn." + m + ".base_layer.bias");
  EXPECT_EQ(extra, want);
  auto fresh = wave2_peft_model("qwen2");  // a base without merge round-off, as the reload's
  fresh->load_adapter(dir, "default", /*trainable=*/true);
  expect_trained_round_trip(*fresh, [] { return wave2_peft_model("qwen2"); }, wave2_input("qwen2"),
                            "qwen2_lora_only_trained");
}
