// Every registered method trains through `peft train` on the bundled model and the bundled task
// (stories260K, E2E: meaning representation -> description) and lowers the validation loss
// below where it started (the eval_on_start entry of metrics.jsonl). Short runs: 64 training
// rows, 16 validation rows, 15 steps.
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

class TrainCliEveryMethod : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainCliEveryMethod, LowersValidationLossOnE2E) {
  const std::string m = GetParam();
  static const std::string data = temp_dir("train_methods_data");
  static const std::string train = head_lines(source_path("assets/e2e/train.jsonl"), data + "/train.jsonl", 64);
  static const std::string eval = head_lines(source_path("assets/e2e/validation.jsonl"), data + "/eval.jsonl", 16);
  const std::string out = temp_dir("train_method_" + m);
  std::string log;
  int rc = run_cli("train --model " + source_path("assets/stories260K") + " --train " + train + " --eval " + eval +
                       " --method " + m + " --output-dir " + out +
                       " --max_steps 15 --learning_rate 5e-3 --per_device_train_batch_size 4 --max_length 128"
                       " --eval_on_start true --save_steps 0 --logging_steps 5 --progress false --seed 3" +
                       short_run_options(m),
                   &log);
  ASSERT_EQ(rc, 0) << log;
  std::ifstream f(out + "/metrics.jsonl");
  std::vector<double> evals;
  std::string line;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("eval_loss")) evals.push_back(j["eval_loss"].get<double>());
  }
  ASSERT_GE(evals.size(), 2u) << log;
  EXPECT_LT(evals.back(), evals.front()) << m << ": validation loss " << evals.front() << " -> " << evals.back();
  EXPECT_TRUE(std::filesystem::exists(out + "/adapter_config.json"));
}

INSTANTIATE_TEST_SUITE_P(All, TrainCliEveryMethod, ::testing::ValuesIn(peft::method_names()), [](const auto& info) {
  std::string n = info.param;
  for (auto& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
});
