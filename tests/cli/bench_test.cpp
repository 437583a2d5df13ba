// `peft bench --small`: the table has full fine-tuning and LoRA rows, and LoRA's trainable count
// is the closed form r * (in + out) per targeted module (q_proj and v_proj of every layer).
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>

#include "cli/bench_step.h"
#include "models/quant_linear.h"
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

// --quantize adds a quantized row per method (not full); --adapter_overrides and --kv_heads reach
// the workers: LoRA r 4 on q, k, v, o with grouped-query attention has the closed-form count, and
// the NF4 blocks with double quantization cost 4 + 8/64 bits per weight plus the nested scales.
TEST(BenchCli, QuantizedRowsTakeAdapterOverridesAndKvHeads) {
  std::string dir = test::temp_dir("bench_quant");
  std::string out;
  const std::string overrides = R"('{"r": 4, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}')";
  ASSERT_EQ(test::run_cli("bench --small --quiet --methods lora --kv_heads 2 --quantize nf4 --double_quant true"
                          " --adapter_overrides " + overrides + " --out " + dir + "/r.json",
                          &out),
            0)
      << out;
  EXPECT_EQ(table_row(out, "full").size(), 9u) << out;
  EXPECT_EQ(table_row(out, "lora").size(), 9u) << out;
  auto q = table_row(out, "lora@nf4");
  ASSERT_EQ(q.size(), 9u) << out;
  auto r = read_json(dir + "/r.json");
  const auto& c = r["model_config"];
  EXPECT_EQ(c["num_key_value_heads"].get<int64_t>(), 2);
  const int64_t H = c["hidden_size"], L = c["num_hidden_layers"], heads = c["num_attention_heads"];
  const int64_t hd = H / heads, kv = 2 * hd, rank = 4;
  const int64_t closed = L * rank * ((H + H) + (H + kv) + (H + kv) + (H + H));  // q, k, v, o
  EXPECT_EQ(std::stoll(q[1]), closed) << out;
  EXPECT_EQ(std::stoll(table_row(out, "lora")[1]), closed) << out;
  const auto& run = r["methods"]["runs"][0][2];
  EXPECT_EQ(run["quantize"], "nf4");
  EXPECT_EQ(run["quantized_layers"].get<int64_t>(), 7 * L);  // every block Linear; the head stays float
  const double bits = run["quant_bits_per_param_blocks"].get<double>();
  EXPECT_GE(bits, 4.0 + 8.0 / 64);
  EXPECT_LE(bits, 4.2);
  EXPECT_NE(out.find("bits per parameter"), std::string::npos) << out;
  EXPECT_TRUE(std::isfinite(run["first_loss"].get<double>()));
}

// A quantized StepBench builds its model without writing the float weights and fills each with
// nn.Linear's init, U(-1/sqrt(in), 1/sqrt(in)), right before quantizing it: every quantized
// layer and the float head hold such values (not zeros, not garbage).
TEST(BenchCli, QuantizedStepBenchFillsEveryWeightWithLinearInit) {
  peft::cli::BenchShape s = peft::cli::BenchShape::small();
  peft::quant::QuantConfig qc;
  qc.type = peft::quant::QuantType::NF4;
  peft::cli::StepBench b(s, "lora", 10, torch::kFloat32, &qc);
  int64_t quantized = 0, floats = 0;
  for (auto& m : b.model().modules()) {
    auto* l = dynamic_cast<peft::Linear*>(m.get());
    if (!l) continue;
    const double bound = 1.0 / std::sqrt(static_cast<double>(l->in_features));
    torch::Tensor w;
    if (auto* ql = dynamic_cast<peft::QuantLinear*>(l)) {
      w = ql->dequantized_weight(torch::kFloat32);
      ++quantized;
    } else {
      w = l->weight.detach().to(torch::kFloat32);
      ++floats;
    }
    ASSERT_TRUE(torch::isfinite(w).all().item<bool>());
    const double amax = w.abs().max().item<double>(), sd = w.std().item<double>();
    EXPECT_LE(amax, bound * 1.0001);
    EXPECT_GE(amax, 0.9 * bound);
    // A uniform on [-b, b] has standard deviation b / sqrt(3); NF4's rounding moves it a little.
    EXPECT_NEAR(sd, bound / std::sqrt(3.0), 0.1 * bound);
  }
  EXPECT_EQ(quantized, 7 * s.layers);
  EXPECT_GE(floats, 1);  // the LM head
  EXPECT_TRUE(std::isfinite(b.step()));
}

TEST(BenchCli, Llama3ShapeNeedsAQuantizedBaseAndUnknownShapesAreRefused) {
  std::string out;
  EXPECT_NE(test::run_cli("bench --shape llama3-8b --quiet", &out), 0);
  EXPECT_NE(out.find("needs a quantized base"), std::string::npos) << out;
  EXPECT_NE(test::run_cli("bench --shape llama9-1t --quiet", &out), 0);
  EXPECT_NE(out.find("llama9-1t"), std::string::npos) << out;
  EXPECT_NE(out.find("llama3-8b"), std::string::npos) << out;
}
