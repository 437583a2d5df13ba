// `peft assess` end to end on the bundled model: a 2-method, tiny-budget matrix whose table
// numbers must equal what the per-method `peft train` / `peft eval` runs give on their own,
// resumed after a lost cell (only that cell reruns), and its refusals.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "peft/io.h"
#include "peft/report.h"
#include "test_util.h"
#include "cli/method_runs.h"

using peft::test::run_cli;
using peft::test::source_path;
using peft::test::temp_dir;
using peft::test::head_lines;
namespace fs = std::filesystem;

namespace {

const nlohmann::json* row_of(const nlohmann::json& rows, const std::string& label) {
  for (auto& r : rows)
    if (r["label"] == label) return &r;
  return nullptr;
}

}  // namespace

TEST(AssessCli, TableEqualsPerMethodRunsAndResumes) {
  const auto dir = temp_dir("assess");
  const std::string model = source_path("assets/stories260K");
  const std::string train = head_lines(source_path("assets/e2e/train.jsonl"), dir + "/train.jsonl", 48);
  const std::string eval = head_lines(source_path("assets/e2e/validation.jsonl"), dir + "/eval.jsonl", 8);
  const std::string common = " --model " + model + " --task nlg --train " + train + " --eval " + eval +
                             " --budget-steps 6 --batch 4 --max-length 96 --max-new-tokens 8 --gen-examples 4";
  std::string log;
  ASSERT_EQ(run_cli("assess" + common + " --methods lora,ia3 --out " + dir + "/out", &log), 0) << log;
  auto rep = peft::read_json(dir + "/out/assessment.json");
  const auto& rows = rep["rows"];
  ASSERT_EQ(rows.size(), 3u) << rows.dump();  // full + lora + ia3
  for (const char* f : {"assessment.md", "assessment.csv", "assessment.html"})
    EXPECT_TRUE(fs::exists(dir + "/out/" + f)) << f;
  EXPECT_NE(peft::read_file(dir + "/out/assessment.html").find("<svg"), std::string::npos);

  // The LoRA row against an independent `peft train` + `peft eval` with the preset's keys.
  const auto* lora = row_of(rows, "lora");
  ASSERT_TRUE(lora);
  const auto cell = peft::read_json(dir + "/out/cells/lora/seed42/result.json");
  std::string keys;
  for (auto& kv : cell["train_keys"].items()) keys += " --" + kv.key() + " " + (kv.value().is_string() ? kv.value().get<std::string>() : kv.value().dump());
  const std::string solo = dir + "/solo";
  ASSERT_EQ(run_cli("train --model " + model + " --train " + train + " --eval " + eval + " --method lora --output-dir " +
                        solo + " --max_steps 6 --seed 42 --per_device_train_batch_size 4 --max_length 96 --save_steps 0"
                        " --eval_steps 0 --progress false" + keys,
                    &log),
            0)
      << log;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m, std::regex(R"(trainable params: (\d+) \|\| all params: (\d+))"))) << log;
  EXPECT_EQ((*lora)["trainable_params"]["mean"].get<double>(), std::stod(m[1].str()));
  EXPECT_NEAR((*lora)["trainable_pct"]["mean"].get<double>(), 100.0 * std::stod(m[1].str()) / std::stod(m[2].str()), 1e-9);
  double solo_eval_loss = -1;
  for (auto& r : peft::read_jsonl(solo + "/metrics.jsonl"))
    if (r.contains("eval_loss")) solo_eval_loss = r["eval_loss"].get<double>();
  EXPECT_DOUBLE_EQ((*lora)["eval_loss"]["mean"].get<double>(), solo_eval_loss);  // training is deterministic
  ASSERT_EQ(run_cli("eval --model " + model + " --adapter " + solo + " --data " + eval +
                        " --metrics bleu,chrf,rouge_l --max_new_tokens 8 --max_examples 4 --show 0 --out " + solo + "/gen.json",
                    &log),
            0)
      << log;
  auto gen = peft::read_json(solo + "/gen.json");
  for (const char* k : {"bleu", "chrf", "rouge_l"}) EXPECT_DOUBLE_EQ((*lora)[k]["mean"].get<double>(), gen[k].get<double>()) << k;
  for (auto& r : rows) {
    EXPECT_GT(r["peak_rss_mib"]["mean"].get<double>(), 10.0) << r.dump();
    EXPECT_GT(r["tokens_per_s"]["mean"].get<double>(), 0.0) << r.dump();
  }
  // The full fine-tuning reference trains more than either method.
  EXPECT_GT((*row_of(rows, "full"))["trainable_params"]["mean"].get<double>(), (*lora)["trainable_params"]["mean"].get<double>());
  EXPECT_LT((*row_of(rows, "ia3"))["trainable_params"]["mean"].get<double>(), (*lora)["trainable_params"]["mean"].get<double>());

  // Lose one cell (as an interrupted run does) and rerun: only that one runs again.
  const auto ia3_log = peft::read_file(dir + "/out/cells/ia3/seed42/log.txt");
  fs::remove(dir + "/out/cells/lora/seed42/result.json");
  ASSERT_EQ(run_cli("assess" + common + " --methods lora,ia3 --out " + dir + "/out", &log), 0) << log;
  EXPECT_NE(log.find("1 to run (2 finished earlier)"), std::string::npos) << log;
  EXPECT_EQ(peft::read_file(dir + "/out/cells/ia3/seed42/log.txt"), ia3_log);  // not rerun
  auto rep2 = peft::read_json(dir + "/out/assessment.json");
  EXPECT_DOUBLE_EQ((*row_of(rep2["rows"], "lora"))["eval_loss"]["mean"].get<double>(), solo_eval_loss);
}

TEST(AssessCli, BadInputIsAClearError) {
  const auto dir = temp_dir("assess_bad");
  const std::string model = source_path("assets/stories260K");
  const std::string data = source_path("assets/e2e/validation.jsonl");
  std::string log;
  EXPECT_EQ(run_cli("assess --model " + model + " --task nlg --train " + data + " --eval " + data +
                        " --methods lora,nosuch --out " + dir + "/o",
                    &log),
            1);
  EXPECT_NE(log.find("unknown method 'nosuch'"), std::string::npos) << log;
  EXPECT_EQ(run_cli("assess --model " + model + " --task poetry --train " + data + " --eval " + data + " --out " + dir + "/o", &log), 1);
  EXPECT_NE(log.find("--task"), std::string::npos) << log;
  EXPECT_EQ(run_cli("assess --model " + model + " --task nlg --train " + dir + "/missing.jsonl --eval " + data + " --out " + dir + "/o", &log), 1);
  EXPECT_NE(log.find("missing.jsonl"), std::string::npos) << log;
}

// The memory-vs-size plot from scripts/memory_vs_size.sh's records: one line per config through
// its points in parameter order, placed by the record values; malformed records name file and line.
TEST(AssessCli, MemoryVsSizePlotDrawsOneLinePerConfig) {
  auto dir = temp_dir("assess_sizes");
  {
    std::ofstream f(dir + "/sizes.jsonl");
    f << R"({"config": "full float32", "total": 1000000, "peak_rss_mib": 400})" << "\n"
      << R"({"config": "lora float32", "total": 1000000, "peak_rss_mib": 300})" << "\n"
      << R"({"config": "full float32", "total": 100000000, "peak_rss_mib": 4000})" << "\n"
      << "\n"
      << R"({"config": "lora float32", "total": 100000000, "peak_rss_mib": 2000})" << "\n";
  }
  std::string out;
  ASSERT_EQ(run_cli("assess --memory-vs-size " + dir + "/sizes.jsonl --out " + dir + "/o", &out), 0) << out;
  auto svg = peft::read_file(dir + "/o/memory_vs_size.svg");
  std::smatch m;
  std::vector<std::vector<std::pair<double, double>>> lines;
  std::string rest = svg;
  while (std::regex_search(rest, m, std::regex("points=\"([^\"]*)\""))) {
    std::istringstream ps(m[1].str());
    std::vector<std::pair<double, double>> pts;
    std::string xy;
    while (ps >> xy) pts.emplace_back(std::stod(xy.substr(0, xy.find(','))), std::stod(xy.substr(xy.find(',') + 1)));
    lines.push_back(pts);
    rest = m.suffix();
  }
  ASSERT_EQ(lines.size(), 2u) << svg;
  for (auto& l : lines) {
    ASSERT_EQ(l.size(), 2u);
    EXPECT_LT(l[0].first, l[1].first);   // 1M left of 100M
    EXPECT_GT(l[0].second, l[1].second);  // more memory is higher up (smaller y)
  }
  // Same x for the same size; full fine-tuning above LoRA at 100M (4000 vs 2000 MiB), with the
  // y axis linear from 0: the distance from the bottom doubles.
  EXPECT_DOUBLE_EQ(lines[0][1].first, lines[1][1].first);
  const double bottom = 360 - 50;
  EXPECT_NEAR((bottom - lines[0][1].second) / (bottom - lines[1][1].second), 2.0, 1e-3);
  EXPECT_NE(svg.find(">full float32<"), std::string::npos);
  EXPECT_NE(svg.find(">lora float32<"), std::string::npos);
  {
    std::ofstream f(dir + "/bad.jsonl");
    f << R"({"config": "full float32", "total": 1000000, "peak_rss_mib": 400})" << "\n"
      << R"({"config": "lora", "total": "many", "peak_rss_mib": 300})" << "\n";
  }
  EXPECT_NE(run_cli("assess --memory-vs-size " + dir + "/bad.jsonl --out " + dir + "/o2", &out), 0);
  EXPECT_NE(out.find("bad.jsonl:2: field 'total'"), std::string::npos) << out;
}
