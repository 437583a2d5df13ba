// `peft forward --adapter`, `DIR:SCALE`, and `peft merge` against Python peft's fixtures.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/io.h"
#include "test_util.h"

using namespace peft;
using peft::test::run_cli;
using peft::test::source_path;
using peft::test::temp_dir;

namespace {
const std::string kModel = source_path("tests/fixtures/hf/models/llama");
const std::string kAdapter = source_path("tests/fixtures/peft/adapters/llama/lora");
}  // namespace

TEST(AdapterCli, ForwardWithAdapterMatchesPeft) {
  auto dir = temp_dir("cli_adapter");
  std::string out;
  ASSERT_EQ(run_cli("forward --model " + kModel + " --inputs " + kModel + "/inputs.safetensors --out " + dir +
                        "/o.safetensors --adapter " + kAdapter,
                    &out),
            0)
      << out;
  auto ref = load_safetensors(kAdapter + "/reference.safetensors");
  auto got = load_safetensors(dir + "/o.safetensors");
  EXPECT_TRUE(torch::allclose(got.at("logits"), ref.at("logits"), 1e-4, 1e-5));
  // Scale 0 gives the base model's logits.
  ASSERT_EQ(run_cli("forward --model " + kModel + " --inputs " + kModel + "/inputs.safetensors --out " + dir +
                        "/z.safetensors --adapter " + kAdapter + ":0",
                    &out),
            0)
      << out;
  auto base = load_safetensors(kModel + "/reference.safetensors");
  EXPECT_TRUE(torch::allclose(load_safetensors(dir + "/z.safetensors").at("logits"), base.at("logits"), 1e-4, 1e-5));
}

TEST(AdapterCli, MergeWritesCheckpointMatchingPeftMerge) {
  auto dir = temp_dir("cli_merge");
  std::string out;
  ASSERT_EQ(run_cli("merge --model " + kModel + " --adapter " + kAdapter + " --out " + dir + "/merged", &out), 0) << out;
  // Weights equal the checkpoint peft's merge_and_unload() wrote.
  auto ours = load_safetensors(dir + "/merged/model.safetensors");
  auto theirs = load_safetensors(source_path("tests/fixtures/hf/merged/llama_lora/model.safetensors"));
  ASSERT_EQ(ours.size(), theirs.size());
  for (auto& kv : theirs) EXPECT_TRUE(torch::allclose(ours.at(kv.first), kv.second, 0, 1e-6)) << kv.first;
  ASSERT_EQ(run_cli("forward --model " + dir + "/merged --inputs " + kModel + "/inputs.safetensors --out " + dir +
                        "/m.safetensors",
                    &out),
            0)
      << out;
  auto ref = load_safetensors(kAdapter + "/reference.safetensors");
  EXPECT_TRUE(torch::allclose(load_safetensors(dir + "/m.safetensors").at("logits"), ref.at("merged_logits"), 1e-4, 1e-5));
  // A method that cannot merge (prompt tuning) or a missing adapter folder gives a clear error.
  EXPECT_NE(run_cli("merge --model " + kModel + " --adapter " + dir + "/nope --out " + dir + "/x", &out), 0);
  EXPECT_NE(out.find("adapter_config.json"), std::string::npos) << out;
}
