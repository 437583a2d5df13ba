// `peft train --gradient_checkpointing true --loss_chunk_tokens N` (docs/MEMORY.md): the same
// recipe trains to the same losses as without them (the switches change memory, not the math),
// with LoRA dropout so the recompute must redraw the same masks; the recipe key works as the
// flag; a negative chunk size is refused.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "cli/method_runs.h"
#include "test_util.h"

using peft::test::head_lines;
using peft::test::run_cli;
using peft::test::source_path;
using peft::test::temp_dir;

namespace {

// Every loss record of metrics.jsonl (train and eval) of a short LoRA run.
std::vector<double> losses(const std::string& extra, const std::string& tag, std::string* log) {
  static const std::string dir = temp_dir("memory_cli_data");
  static const std::string train = head_lines(source_path("assets/e2e/train.jsonl"), dir + "/train.jsonl", 32);
  static const std::string eval = head_lines(source_path("assets/e2e/validation.jsonl"), dir + "/eval.jsonl", 8);
  const std::string out = temp_dir("memory_cli_" + tag);
  int rc = run_cli("train --model " + source_path("assets/stories260K") + " --train " + train + " --eval " + eval +
                       " --method lora --lora_dropout 0.1 --output-dir " + out +
                       " --max_steps 6 --learning_rate 5e-3 --per_device_train_batch_size 4 --max_length 96"
                       " --eval_steps 3 --save_steps 0 --logging_steps 1 --progress false --seed 3" +
                       extra,
                   log);
  EXPECT_EQ(rc, 0) << *log;
  std::vector<double> v;
  std::ifstream f(out + "/metrics.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    for (const char* k : {"loss", "eval_loss"})
      if (j.contains(k)) v.push_back(j[k].get<double>());
  }
  return v;
}

}  // namespace

TEST(MemoryCli, CheckpointingAndChunkedLossTrainTheSame) {
  std::string a, b, c;
  auto plain = losses("", "plain", &a);
  auto mem = losses(" --gradient_checkpointing true --loss_chunk_tokens 37", "mem", &b);
  const std::string recipe = temp_dir("memory_cli_recipe") + "/r.json";
  std::ofstream(recipe) << R"({"gradient_checkpointing": true})";
  auto key = losses(" --config " + recipe, "key", &c);
  ASSERT_GE(plain.size(), 6u) << a;
  ASSERT_EQ(mem.size(), plain.size()) << b;
  ASSERT_EQ(key.size(), plain.size()) << c;
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_NEAR(mem[i], plain[i], 1e-5 * std::max(1.0, plain[i])) << i << "\n" << b;
    EXPECT_NEAR(key[i], plain[i], 1e-5 * std::max(1.0, plain[i])) << i << "\n" << c;
  }
}

TEST(MemoryCli, NegativeChunkRefused) {
  std::string log;
  int rc = run_cli("train --model " + source_path("assets/stories260K") + " --train " +
                       source_path("assets/e2e/train.jsonl") + " --method lora --output-dir " + temp_dir("memory_cli_neg") +
                       " --loss_chunk_tokens=-1",
                   &log);
  EXPECT_NE(rc, 0);
  EXPECT_NE(log.find("loss_chunk_tokens"), std::string::npos) << log;
}
