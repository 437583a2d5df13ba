// `peft train --dtype bfloat16` (docs/PRECISION.md): LoRA on the bundled stories260K / E2E with a
// bfloat16 base reaches an eval loss within 5% of the float32 run of the same recipe; every
// registered method trains on a bfloat16 base; float16 on CPU and conflicting dtype keys are
// refused with a clear message.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "peft/tuner.h"
#include "test_util.h"
#include "cli/method_runs.h"

using peft::test::run_cli;
using peft::test::source_path;
using peft::test::temp_dir;
using peft::test::head_lines;
using peft::test::short_run_options;

namespace {

struct Data {
  std::string train, eval;
};
const Data& data() {
  static const Data d = [] {
    std::string dir = temp_dir("precision_cli_data");
    return Data{head_lines(source_path("assets/e2e/train.jsonl"), dir + "/train.jsonl", 64),
                head_lines(source_path("assets/e2e/validation.jsonl"), dir + "/eval.jsonl", 16)};
  }();
  return d;
}

// Eval losses in metrics.jsonl order; the run's log in *log.
std::vector<double> train(const std::string& method, const std::string& extra, const std::string& tag, std::string* log,
                          int steps = 15) {
  const std::string out = temp_dir("precision_" + tag);
  int rc = run_cli("train --model " + source_path("assets/stories260K") + " --train " + data().train + " --eval " +
                       data().eval + " --method " + method + " --output-dir " + out + " --max_steps " +
                       std::to_string(steps) +
                       " --learning_rate 5e-3 --per_device_train_batch_size 4 --max_length 128"
                       " --eval_on_start true --save_steps 0 --logging_steps 5 --progress false --seed 3" +
                       short_run_options(method) + extra,
                   log);
  EXPECT_EQ(rc, 0) << *log;
  std::vector<double> evals;
  std::ifstream f(out + "/metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("eval_loss")) evals.push_back(j["eval_loss"].get<double>());
  }
  return evals;
}

}  // namespace

// The same recipe and steps in float32 and on a bfloat16 base (once as --dtype, once as the
// recipe key torch_dtype): final eval losses within 5% of each other, and both below the start.
TEST(PrecisionCli, LoraBf16EvalLossWithin5PercentOfFloat32) {
  std::string log32, log16, logkey;
  auto e32 = train("lora", "", "lora32", &log32, 30);
  auto e16 = train("lora", " --dtype bfloat16", "lora16", &log16, 30);
  const std::string recipe = temp_dir("precision_recipe") + "/bf16.json";
  std::ofstream(recipe) << R"({"torch_dtype": "bfloat16"})";
  auto ek = train("lora", " --config " + recipe, "lorakey", &logkey, 30);
  ASSERT_GE(e32.size(), 2u) << log32;
  ASSERT_GE(e16.size(), 2u) << log16;
  ASSERT_EQ(ek, e16) << "torch_dtype in a recipe is --dtype\n" << logkey;
  std::cerr << "eval loss float32 " << e32.front() << " -> " << e32.back() << ", bfloat16 " << e16.front() << " -> "
            << e16.back() << "\n";
  EXPECT_LT(e16.back(), e16.front());
  EXPECT_NEAR(e16.back(), e32.back(), 0.05 * e32.back());
  EXPECT_NE(e16.back(), e32.back());  // it did train in another precision
}

// Methods the issue names, on a bfloat16 base against float32: the same recipe lands within 5%.
class PrecisionCliMethodVsFloat32 : public ::testing::TestWithParam<std::string> {};
TEST_P(PrecisionCliMethodVsFloat32, EvalLossWithin5Percent) {
  const std::string m = GetParam();
  std::string a, b;
  auto e32 = train(m, "", m + "_32", &a), e16 = train(m, " --bf16 true", m + "_16", &b);
  ASSERT_GE(e32.size(), 2u) << a;
  ASSERT_GE(e16.size(), 2u) << b;
  EXPECT_NEAR(e16.back(), e32.back(), 0.05 * e32.back()) << m;
}
INSTANTIATE_TEST_SUITE_P(Named, PrecisionCliMethodVsFloat32,
                         ::testing::Values("dora", "ia3", "prefix-tuning", "prompt-tuning", "bottleneck", "bitfit"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (auto& ch : n)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

// Every registered method trains on a bfloat16 base: the validation loss goes down.
class PrecisionCliEveryMethod : public ::testing::TestWithParam<std::string> {};
TEST_P(PrecisionCliEveryMethod, Bf16BaseLowersValidationLoss) {
  const std::string m = GetParam();
  std::string log;
  auto e = train(m, " --dtype bfloat16", "every_" + m, &log);
  ASSERT_GE(e.size(), 2u) << log;
  EXPECT_LT(e.back(), e.front()) << m << ": validation loss " << e.front() << " -> " << e.back();
}
INSTANTIATE_TEST_SUITE_P(All, PrecisionCliEveryMethod, ::testing::ValuesIn(peft::method_names()), [](const auto& info) {
  std::string n = info.param;
  for (auto& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
});

TEST(PrecisionCli, Float16OnCpuIsRefused) {
  std::string log;
  const std::string out = temp_dir("precision_fp16");
  int rc = run_cli("train --model " + source_path("assets/stories260K") + " --train " + data().train +
                       " --method lora --max_steps 1 --dtype float16 --output-dir " + out,
                   &log);
  EXPECT_NE(rc, 0);
  EXPECT_NE(log.find("float16 matrix products are not implemented on CPU"), std::string::npos) << log;
  rc = run_cli("eval --model " + source_path("assets/stories260K") + " --data " + data().eval +
                   " --metrics loss --dtype float16",
               &log);
  EXPECT_NE(rc, 0);
  EXPECT_NE(log.find("float16 matrix products are not implemented on CPU"), std::string::npos) << log;
}

TEST(PrecisionCli, ConflictingDtypeKeysAreRefused) {
  std::string log;
  int rc = run_cli("train --model " + source_path("assets/stories260K") + " --train " + data().train +
                       " --method lora --max_steps 1 --bf16 true --dtype float32 --output-dir " + temp_dir("precision_conf"),
                   &log);
  EXPECT_NE(rc, 0);
  EXPECT_NE(log.find("disagree"), std::string::npos) << log;
  rc = run_cli("train --model " + source_path("assets/stories260K") + " --train " + data().train +
                   " --method lora --max_steps 1 --dtype bfloat8 --output-dir " + temp_dir("precision_bad"),
               &log);
  EXPECT_NE(rc, 0);
  EXPECT_NE(log.find("bfloat8"), std::string::npos) << log;
}
