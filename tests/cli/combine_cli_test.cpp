// `peft combine` against Python peft 0.13.2's add_weighted_adapter fixtures
// (tests/fixtures/wave2/adapters/llama/weighted_*), and its errors for bad input.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"

using namespace peft;
using peft::test::run_cli;
using peft::test::source_path;
using peft::test::temp_dir;

namespace {
const std::string kRoot = source_path("tests/fixtures/wave2");
const std::string kModel = kRoot + "/models/llama";
const std::string kA = kRoot + "/adapters/llama/multi_a";
const std::string kB = kRoot + "/adapters/llama/multi_b";

std::string combine_args(const std::string& extra) {
  return "combine --model " + kModel + " --adapter a=" + kA + " --adapter b=" + kB + " " + extra;
}
}  // namespace

TEST(CombineCli, DareTiesWithSeedMatchesPeft) {
  auto dir = temp_dir("cli_combine");
  std::string out;
  ASSERT_EQ(run_cli(combine_args("--weights 0.7,0.3 --combination dare_ties --density 0.5 "
                                 "--majority_sign_method total --seed 31337 --out " + dir + "/w"),
                    &out),
            0)
      << out;
  EXPECT_NE(out.find("24 DARE masks"), std::string::npos) << out;
  const std::string ref_dir = kRoot + "/adapters/llama/weighted_dare_ties";
  auto theirs = load_safetensors(ref_dir + "/adapter_model.safetensors");
  auto ours = load_safetensors(dir + "/w/adapter_model.safetensors");
  ASSERT_EQ(ours.size(), theirs.size());
  for (auto& [k, t] : theirs) {
    ASSERT_TRUE(ours.count(k)) << k;
    EXPECT_TRUE(torch::allclose(ours.at(k), t, 0, 1e-6)) << k;
  }
  // The folder loads like any LoRA and gives peft's logits.
  auto m = load_model(kModel);
  m->eval();
  PeftModel pm(m);
  pm.load_adapter(dir + "/w");
  auto in = load_safetensors(kModel + "/inputs.safetensors");
  ModelInput mi;
  mi.input_ids = in.at("input_ids");
  mi.attention_mask = in.at("attention_mask");
  torch::NoGradGuard ng;
  auto ref = load_safetensors(ref_dir + "/reference.safetensors");
  EXPECT_TRUE(torch::allclose(pm.forward(mi).logits, ref.at("logits"), 1e-4, 1e-5));
}

TEST(CombineCli, SvdTypeMatchesPeftProduct) {
  auto dir = temp_dir("cli_combine_svd");
  std::string out;
  ASSERT_EQ(run_cli(combine_args("--weights 0.7,0.3 --combination magnitude_prune_svd --density 0.5 --out " + dir), &out),
            0)
      << out;
  auto theirs = load_safetensors(kRoot + "/adapters/llama/weighted_magnitude_prune_svd/adapter_model.safetensors");
  auto ours = load_safetensors(dir + "/adapter_model.safetensors");
  for (auto& [k, t] : theirs) {
    if (k.find("lora_A") == std::string::npos) continue;
    auto kb = k.substr(0, k.size() - 13) + "lora_B.weight";
    EXPECT_TRUE(torch::allclose(ours.at(kb).matmul(ours.at(k)), theirs.at(kb).matmul(t), 0, 1e-5)) << k;
  }
}

TEST(CombineCli, BadInputGivesClearErrors) {
  auto dir = temp_dir("cli_combine_bad");
  std::string out;
  EXPECT_NE(run_cli(combine_args("--weights 0.7,0.3 --combination average --out " + dir + "/x"), &out), 0);
  EXPECT_NE(out.find("unknown combination type 'average'"), std::string::npos) << out;
  EXPECT_NE(run_cli(combine_args("--weights 0.7 --combination linear --out " + dir + "/x"), &out), 0);
  EXPECT_NE(out.find("1 weights for 2 adapters"), std::string::npos) << out;
  EXPECT_NE(run_cli(combine_args("--weights 0.7,abc --out " + dir + "/x"), &out), 0);
  EXPECT_NE(out.find("'abc' is not a number"), std::string::npos) << out;
  for (std::string d : {"0", "1.5"}) {
    EXPECT_NE(run_cli(combine_args("--weights 0.7,0.3 --combination ties --density " + d + " --out " + dir + "/x"), &out), 0);
    EXPECT_NE(out.find("--density: must be in (0, 1]"), std::string::npos) << out;
  }
  EXPECT_NE(run_cli(combine_args("--weights 0.7,0.3 --combination ties --out " + dir + "/x"), &out), 0);
  EXPECT_NE(out.find("needs a density"), std::string::npos) << out;
  EXPECT_NE(run_cli("combine --model " + kModel + " --adapter a=" + kA + " --adapter c=" + kRoot +
                        "/adapters/llama/multi_c_r2 --weights 0.5,0.5 --combination linear --out " + dir + "/x",
                    &out),
            0);
  EXPECT_NE(out.find("same r value"), std::string::npos) << out;
  // An adapter whose config names another base.
  auto other = dir + "/other_base";
  std::filesystem::create_directories(other);
  std::filesystem::copy_file(kB + "/adapter_model.safetensors", other + "/adapter_model.safetensors");
  auto cfg = read_json(kB + "/adapter_config.json");
  cfg["base_model_name_or_path"] = "models/gpt2";
  write_json(other + "/adapter_config.json", cfg);
  EXPECT_NE(run_cli("combine --model " + kModel + " --adapter a=" + kA + " --adapter b=" + other +
                        " --weights 0.7,0.3 --combination linear --out " + dir + "/x",
                    &out),
            0);
  EXPECT_NE(out.find("adapters of different bases"), std::string::npos) << out;
  EXPECT_NE(out.find("models/gpt2"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir + "/x"));
  // Same names twice.
  EXPECT_NE(run_cli("combine --model " + kModel + " --adapter a=" + kA + " --adapter a=" + kB +
                        " --weights 0.7,0.3 --out " + dir + "/x",
                    &out),
            0);
  EXPECT_NE(out.find("name 'a' given twice"), std::string::npos) << out;
}
