// VeRA against Python peft 0.13.2 (tests/fixtures/wave2/adapters/llama/vera_{proj,noproj}):
// the shared projections regenerated from projection_prng_key bitwise as peft's (so a folder
// saved without them loads to the same model in both libraries), logits and merged logits.
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

torch::Tensor projection(const PeftModel& pm, const std::string& name) {
  for (auto& b : pm.adapter("default").input->named_buffers())
    if (b.key() == name) return b.value();
  ADD_FAILURE() << "no buffer " << name;
  return {};
}

/// peft's folder loads to peft's logits / merged logits; its projections are ours bitwise, both
/// when loaded and when generated afresh from the config; our saved folder has peft's keys.
void expect_vera_fixture(const std::string& adapter, const torch::Tensor& A, const torch::Tensor& B) {
  const std::string dir = wave2_path("adapters/llama/" + adapter);
  auto ref = load_safetensors(dir + "/reference.safetensors");
  auto pm = wave2_peft_model("llama");
  pm->load_adapter(dir);
  EXPECT_TRUE(torch::equal(projection(*pm, "vera_A"), A)) << adapter;
  EXPECT_TRUE(torch::equal(projection(*pm, "vera_B"), B)) << adapter;
  expect_reference_outputs(*pm, "llama", ref, "", adapter);
  auto tmp = temp_dir(adapter);
  pm->save_adapter(tmp);
  EXPECT_EQ(tensor_shapes(dir + "/adapter_model.safetensors"), tensor_shapes(tmp + "/adapter_model.safetensors"));
  expect_same_config(read_json(dir + "/adapter_config.json"), read_json(tmp + "/adapter_config.json"), adapter);
  pm->merge();
  expect_reference_outputs(*pm, "llama", ref, "merged_", adapter);

  // A fresh adapter with the same config draws the same projections (no file involved).
  auto cfg = read_json(dir + "/adapter_config.json");
  auto fresh = wave2_peft_model("llama");
  fresh->add_adapter("default", cfg);
  EXPECT_TRUE(torch::equal(projection(*fresh, "vera_A"), A)) << adapter << " fresh";
  EXPECT_TRUE(torch::equal(projection(*fresh, "vera_B"), B)) << adapter << " fresh";
}

}  // namespace

TEST(VeraFixture, SavedProjectionsAreRegeneratedBitwise) {
  auto file = load_safetensors(wave2_path("adapters/llama/vera_proj/adapter_model.safetensors"));
  expect_vera_fixture("vera_proj", file.at("base_model.vera_A"), file.at("base_model.vera_B"));
}

TEST(VeraFixture, UnsavedProjectionsAreRegeneratedAsPeft) {
  auto ref = load_safetensors(wave2_path("adapters/llama/vera_noproj/reference.safetensors"));
  expect_vera_fixture("vera_noproj", ref.at("vera_A"), ref.at("vera_B"));
}

// save_projection = false: our folder holds only the lambdas, and reloading regenerates the
// projections, so the trained model comes back.
TEST(VeraFixture, NoProjectionRoundTrip) {
  auto pm = wave2_peft_model("llama");
  pm->add_adapter("default", method_config("vera", {{"r", 4}, {"save_projection", false}, {"projection_prng_key", 7}}));
  randomize(*pm, 0.5);
  auto in = wave2_input("llama");
  auto out = logits_of(*pm, in);
  auto dir = temp_dir("vera_noproj_rt");
  pm->save_adapter(dir);
  for (auto& kv : load_safetensors(dir + "/adapter_model.safetensors"))
    EXPECT_EQ(kv.first.find("vera_A"), std::string::npos) << kv.first;
  auto pm2 = wave2_peft_model("llama");
  pm2->load_adapter(dir);
  EXPECT_TRUE(torch::equal(logits_of(*pm2, in), out));
}
