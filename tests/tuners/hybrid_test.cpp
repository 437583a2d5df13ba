// Hybrid methods (MAM adapter = prefix tuning + scaled parallel adapter): parameter count as
// the sum of its components, bit-exact save/load of both parts, KV-cache decoding == full
// forward, finite-difference gradients in float64.
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

using peft::test::logits_of;
ModelInput llama_input() { return peft::test::fixture_input("llama"); }
PeftModelPtr llama(torch::Dtype dt = torch::kFloat32) { return peft::test::fixture_peft_model("llama", dt); }

}  // namespace

TEST(Mam, CountSaveLoadAndDecoding) {
  auto pm = llama();
  pm->add_adapter("default", method_config("mam", {{"num_virtual_tokens", 4}}));
  // prefix: 4 x (2 layers * 2 * 32 kv dims) + parallel adapters at both MLPs (64 -> 4 -> 64).
  const int64_t expected = 4 * 128 + 2 * (4 * 64 + 4 + 64 * 4 + 64);
  auto rep = pm->trainable_report();
  EXPECT_EQ(rep.trainable, expected) << rep.to_string();
  EXPECT_EQ(rep.by_method["prefix_tuning"], 4 * 128);
  EXPECT_EQ(rep.by_method["bottleneck"], expected - 4 * 128);
  {
    torch::NoGradGuard ng;
    for (auto& t : pm->trainable_parameters()) t.add_(torch::randn_like(t) * 0.1);
  }
  auto in = llama_input();
  auto out = logits_of(*pm, in);
  EXPECT_THROW(pm->merge(), Error);
  auto dir = temp_dir("mam");
  pm->save_adapter(dir);
  auto saved = load_safetensors(dir + "/adapter_model.safetensors");
  EXPECT_TRUE(saved.count("prompt_embeddings"));
  EXPECT_TRUE(saved.count("base_model.model.model.layers.0.mlp.adapter_up.weight"));
  EXPECT_EQ(read_json(dir + "/adapter_config.json")["peft_type"], "MAM");
  auto pm2 = llama();
  pm2->load_adapter(dir);
  auto a = pm->adapter_state_dict("default"), b = pm2->adapter_state_dict("default");
  ASSERT_EQ(a.size(), b.size());
  for (auto& kv : a) EXPECT_TRUE(torch::equal(kv.second, b.at(kv.first))) << kv.first;
  EXPECT_TRUE(torch::equal(logits_of(*pm2, in), out));

  // Decoding through the cache (the prefix enters once) equals the full forward.
  auto ids = torch::tensor({1, 45, 112, 7}, torch::kLong).unsqueeze(0);
  ModelInput full;
  full.input_ids = ids;
  auto ref = logits_of(*pm, full);
  KVCache cache;
  for (int64_t t = 0; t < ids.size(1); ++t) {
    ModelInput step;
    step.input_ids = ids.slice(1, t, t + 1);
    step.cache = &cache;
    auto lg = logits_of(*pm, step);
    EXPECT_LT((lg[0][0] - ref[0][t]).abs().max().item<double>(), 1e-5) << t;
  }
}

TEST(Mam, GradientsMatchFiniteDifferences) {
  auto pm = llama(torch::kFloat64);
  pm->add_adapter("default", method_config("mam", {{"num_virtual_tokens", 3}}));
  pm->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    for (auto& t : pm->trainable_parameters()) t.add_(torch::randn_like(t) * 0.3);
  }
  auto in = llama_input();
  peft::test::expect_gradients_match_finite_differences(*pm, in, "mam");
}
