// `peft bench --small`: the table has full fine-tuning and LoRA rows, and LoRA's trainable count
// is the closed form r * (in + out) per targeted module (q_proj and v_proj of every layer).
#include <gtest/gtest.h>

#include <sstream>

#include "cli/bench_step.h"
#include "peft/io.h"
#include "test_util.h"

using namespace peft;

namespace {
// The cells of the table row whose first cell is `name` (empty if none).
std::vector<std::string> table_row(const std::string& out, const std::string& name) {
  std::istringstream is(out);
  std::string line;
  while (std::getline(is, line)) {
    if (line.empty() || line[0] != '|') continue;
    std::vector<std::string> cells;
    std::stringstream ls(line.substr(1));
    std::string cell;
    while (std::getline(ls, cell, '|')) {
      auto b = cell.find_first_not_of(' '), e = cell.find_last_not_of(' ');
      cells.push_back(b == std::string::npos ? "" : cell.substr(b, e - b + 1));
    }
    if (!cells.empty() && cells[0] == name) return cells;
  }
  return {};
}
}  // namespace

TEST(BenchCli, SmallTableHasLoraAndFullRows) {
  std::string dir = test::temp_dir("bench");
  std::string out;
  ASSERT_EQ(test::run_cli("bench --small --quiet --methods lora,ia3 --out " + dir + "/r.json", &out), 0) << out;
  auto full = table_row(out, "full"), lora = table_row(out, "lora");
  ASSERT_EQ(full.size(), 9u) << out;
  ASSERT_EQ(lora.size(), 9u) << out;
  EXPECT_EQ(table_row(out, "ia3").size(), 9u) << out;

  auto r = read_json(dir + "/r.json");
  const auto& c = r["model_config"];
  const int64_t H = c["hidden_size"], L = c["num_hidden_layers"], heads = c["num_attention_heads"];
  const int64_t kv = c["num_key_value_heads"], rank = 8, head_dim = H / heads;
  // q_proj: H -> heads * head_dim; v_proj: H -> kv * head_dim.
  const int64_t lora_closed_form = L * (rank * (H + heads * head_dim) + rank * (H + kv * head_dim));
  EXPECT_EQ(std::stoll(lora[1]), lora_closed_form) << out;
  EXPECT_EQ(std::stoll(full[1]), r["parameters"].get<int64_t>()) << out;
  EXPECT_EQ(full[2], "100.000");
  EXPECT_EQ(full[6], "1.00");  // peak / full
  EXPECT_EQ(full[8], "1.00");  // speed / full

  nlohmann::json lrow;
  for (auto& row : r["methods"]["rows"])
    if (row["name"] == "lora") lrow = row;
  ASSERT_TRUE(lrow.is_object()) << r.dump();
  EXPECT_EQ(lrow["trainable"].get<int64_t>(), lora_closed_form);
  EXPECT_EQ(lrow["targeted_modules"].get<int64_t>(), 2 * L);
  EXPECT_EQ(lrow["total"].get<int64_t>(), r["parameters"].get<int64_t>() + lora_closed_form);
  EXPECT_GT(lrow["tokens_per_s"].get<double>(), 0);
  EXPECT_GT(lrow["peak_rss_mib"].get<double>(), 0);
}

TEST(BenchCli, StepBenchLoraMatchesClosedForm) {
  cli::BenchShape s = cli::BenchShape::small();
  cli::StepBench b(s, "lora", 4);
  EXPECT_EQ(b.trainable, s.layers * 2 * 8 * (s.hidden + s.hidden));
  EXPECT_EQ(b.targeted_modules, 2 * s.layers);
  double l0 = b.step();
  EXPECT_TRUE(std::isfinite(l0));
  // Full fine-tuning of the same model trains every parameter.
  cli::StepBench f(s, "full", 4);
  EXPECT_EQ(f.trainable, f.total);
  EXPECT_EQ(f.total + b.trainable, b.total);
}

// `peft bench --suites dist`: 1 rank vs 2 ranks x 1 thread, tokens/s, scaling efficiency, and the
// all-reduce time per step of the 2-rank run (one bucket for the small model's LoRA gradients),
// whose sum backward starts (overlap) or, with --ddp_overlap false, the step after backward.
TEST(BenchCli, DistSuiteReportsScalingAndAllReduceTime) {
  std::string dir = test::temp_dir("bench_dist");
  std::string out;
  ASSERT_EQ(test::run_cli("bench --small --quiet --suites dist --repeats 1 --out " + dir + "/r.json", &out), 0) << out;
  auto one = table_row(out, "1 x 1"), two = table_row(out, "2 x 1"),
       after = table_row(out, "2 x 1, sums after backward");
  ASSERT_EQ(one.size(), 6u) << out;
  ASSERT_EQ(two.size(), 6u) << out;
  ASSERT_EQ(after.size(), 6u) << out;
  auto r = read_json(dir + "/r.json")["dist"];
  EXPECT_GT(r["tokens_per_s_1"].get<double>(), 0);
  EXPECT_GT(r["tokens_per_s_2"].get<double>(), 0);
  EXPECT_GE(r["allreduce_s"].get<double>(), 0);
  EXPECT_GE(r["wait_s"].get<double>(), 0);
  EXPECT_NEAR(r["scaling_efficiency"].get<double>(),
              r["tokens_per_s_2"].get<double>() / (2 * r["tokens_per_s_1"].get<double>()), 1e-9);
  auto two_run = r["runs"][0]["two"];
  EXPECT_EQ(two_run["ranks"].get<int64_t>(), 2);
  EXPECT_EQ(two_run["buckets"].get<int64_t>(), 1);
  EXPECT_EQ(two_run["trainable"], r["runs"][0]["one"]["trainable"]);
  EXPECT_EQ(two_run["buckets_started_in_backward"].get<double>(), 1.0);
  EXPECT_EQ(r["runs"][0]["two_after_backward"]["buckets_started_in_backward"].get<double>(), 0.0);
  EXPECT_GT(r["tokens_per_s_2_after_backward"].get<double>(), 0);
}

// The worker takes docs/MEMORY.md's two switches (scripts/memory_bench.sh passes them) and
// reports them; neither changes the math, so the first step's loss is the same.
TEST(BenchCli, WorkerTakesTheActivationMemorySwitches) {
  const std::string shape = " --hidden 32 --layers 2 --heads 2 --intermediate 64 --vocab 96 --batch 2 --seq 16"
                            " --warmup 0 --steps 1 --threads 1";
  std::string plain, mem;
  ASSERT_EQ(test::run_cli("bench --worker lora" + shape, &plain), 0) << plain;
  ASSERT_EQ(test::run_cli("bench --worker lora" + shape + " --gradient_checkpointing true --loss_chunk_tokens 8", &mem), 0)
      << mem;
  auto last_json = [](const std::string& out) {  // the worker's one JSON line
    std::istringstream is(out);
    std::string line, json;
    while (std::getline(is, line))
      if (!line.empty() && line[0] == '{') json = line;
    return nlohmann::json::parse(json);
  };
  auto a = last_json(plain), b = last_json(mem);
  EXPECT_EQ(a["gradient_checkpointing"], false);
  EXPECT_EQ(b["gradient_checkpointing"], true);
  EXPECT_EQ(b["loss_chunk_tokens"], 8);
  EXPECT_NEAR(a["first_loss"].get<double>(), b["first_loss"].get<double>(), 1e-5);
}
