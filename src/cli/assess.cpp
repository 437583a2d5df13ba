// `peft assess --model DIR --task nlg|nlu|mt --train FILE --eval FILE --methods a,b,...|all
//              [--budget-steps N] [--seeds K] --out DIR [--KEY VALUE ...]`
// The survey's comparison in one command: every method (plus the full fine-tuning reference
// row) trains with the same steps, batch and data, each in a child process (`peft train`), so
// the peak RSS of one method's run is its own. A cell (method x seed) records the trainable
// parameters and %, the child's peak RSS, tokens/s of the optimizer steps, the final evaluation
// of the training run (loss, and per task: GLUE's accuracy / F1 / MCC / Spearman, or BLEU /
// chrF of generated translations) and, for NLG, BLEU / chrF / ROUGE-L of greedy outputs
// (`peft eval`). Rows are means +- std over seeds. Output: assessment.md / .csv / .json /
// .html (plots as inline SVG). A finished cell (its result.json) is never rerun: interrupt and
// rerun to continue. Unknown --KEY VALUE options go to every `peft train` (data columns, ...).
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <set>
#include <sstream>

#include "cli/assess_run.h"
#include "cli/command.h"
#include "cli/process.h"
#include "cli/recipe.h"
#include "peft/error.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/presets.h"
#include "peft/report.h"
#include "peft/tuner.h"

namespace peft::cli {
namespace {

namespace fs = std::filesystem;

std::string value_text(const nlohmann::json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

std::string clock_text(double s) {
  char buf[32];
  const long t = static_cast<long>(std::max(0.0, s));
  std::snprintf(buf, sizeof buf, "%02ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  return buf;
}

// The options assess itself reads; every other --KEY VALUE goes to `peft train`.
const std::vector<std::string> kOwn = {"model", "task", "train", "eval", "methods", "budget_steps", "seeds", "out",
                                       "batch", "max_length", "max_new_tokens", "gen_examples", "primary",
                                       "memory_vs_size"};

struct Setup {
  std::string model, task, train, eval, out, exe;
  int64_t steps, batch, max_length, max_new_tokens, gen_examples, num_layers;
  std::vector<std::pair<std::string, std::string>> passthrough;
};

/// The methods to run: `all` = every method of the catalog that can be built on this model
/// (tried, as `peft methods` does); the full fine-tuning row first.
std::vector<std::string> resolve_methods(const std::string& spec, const std::string& model_dir) {
  std::vector<std::string> names = spec == "all" ? assessment_methods() : split_commas(spec);
  PEFT_CHECK(!names.empty(), "option --methods: empty list");
  std::vector<std::string> out = {kFullFineTuning};
  for (auto& n : names) {
    if (n == kFullFineTuning) continue;
    if (spec == "all") {
      try {
        auto pm = std::make_shared<PeftModel>(load_model(model_dir));
        nlohmann::json keys = assessment_preset(n, 1).keys;
        keys.erase("learning_rate");
        pm->add_adapter("default", method_config(n, keys));
      } catch (const std::exception& e) {
        std::cerr << "assess: skipping " << n << " (" << e.what() << ")\n";
        continue;
      }
    } else {
      assessment_preset(n, 1);  // an unknown name fails here, before any cell runs
    }
    out.push_back(n);
  }
  return out;
}

/// Runs one cell (train, then for NLG the generation metrics); returns its result.
nlohmann::json run_cell(const Setup& s, const std::string& label, int64_t seed, const fs::path& dir) {
  const AssessmentPreset p = assessment_preset(label, s.num_layers);
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string log = (dir / "log.txt").string();
  std::vector<std::string> train = {s.exe,         "train",        "--model", s.model, "--train", s.train, "--eval", s.eval,
                                    "--method",    p.method,       "--output-dir", (dir / "run").string(),
                                    "--max_steps", std::to_string(s.steps), "--seed", std::to_string(seed),
                                    "--per_device_train_batch_size", std::to_string(s.batch),
                                    "--max_length", std::to_string(s.max_length), "--save_steps", "0",
                                    "--eval_steps", "0", "--logging_steps", std::to_string(std::max<int64_t>(1, s.steps / 10)),
                                    "--progress", "false"};
  for (auto& kv : p.keys.items()) train.insert(train.end(), {"--" + kv.key(), value_text(kv.value())});
  for (auto& [k, v] : s.passthrough) train.insert(train.end(), {"--" + k, v});
  ChildRun t = run_child(train, log);
  PEFT_CHECK(t.status == 0, "assess: `peft train` of ", label, " (seed ", seed, ") failed with status ", t.status,
             "; its output: ", log);
  nlohmann::json summary, final_eval;
  for (auto& r : read_jsonl((dir / "run" / "metrics.jsonl").string())) {
    if (r.contains("train_tokens_per_second")) summary = r;
    if (r.contains("eval_loss")) final_eval = r;
  }
  PEFT_CHECK(!summary.is_null(), "assess: ", (dir / "run" / "metrics.jsonl").string(), " has no end-of-run summary");
  const double trainable = summary["trainable_params"].get<double>(), total = summary["all_params"].get<double>();
  nlohmann::json res = {{"label", label},
                        {"method", p.method},
                        {"seed", seed},
                        {"train_keys", p.keys},
                        {"trainable_params", trainable},
                        {"all_params", total},
                        {"trainable_pct", 100.0 * trainable / total},
                        {"peak_rss_mib", t.peak_rss_mib},
                        {"tokens_per_s", summary["train_tokens_per_second"]},
                        {"train_wall_s", t.wall_s}};
  for (auto& kv : final_eval.items())
    if (kv.key() != "step" && kv.value().is_number()) res[kv.key()] = kv.value();
  if (s.task == "nlg") {
    const std::string gen_out = (dir / "generation.json").string();
    std::vector<std::string> ev = {s.exe, "eval", "--model", s.model, "--adapter", (dir / "run").string(), "--data", s.eval,
                                   "--metrics", "bleu,chrf,rouge_l", "--max_new_tokens", std::to_string(s.max_new_tokens),
                                   "--max_examples", std::to_string(s.gen_examples), "--show", "0", "--out", gen_out};
    ChildRun e = run_child(ev, log);
    PEFT_CHECK(e.status == 0, "assess: `peft eval` of ", label, " (seed ", seed, ") failed with status ", e.status,
               "; its output: ", log);
    auto g = read_json(gen_out);
    for (const char* k : {"bleu", "chrf", "rouge_l"})
      if (g.contains(k)) res[k] = g[k];
  }
  return res;
}

std::string default_primary(const std::string& task, const std::vector<nlohmann::json>& cells) {
  if (task == "nlg") return "rouge_l";
  if (task == "mt") return "eval_bleu";
  for (auto& c : cells)
    if (c.contains("eval_spearman")) return "eval_spearman";  // a regression task (STS-B)
  return "eval_accuracy";
}

int run_assess(Args& a) {
  // --memory-vs-size FILE: scripts/memory_vs_size.sh's records, plotted into the report; alone
  // (no --task) it only writes that plot.
  std::vector<nlohmann::json> sizes;
  if (a.has("memory_vs_size")) sizes = read_memory_vs_size(a.get("memory_vs_size"));
  if (!sizes.empty() && !a.has("task")) {
    const std::string out = a.get("out");
    a.reject_unknown({"memory_vs_size", "out"});
    fs::create_directories(out);
    write_file_atomic(join_path(out, "memory_vs_size.svg"), memory_vs_size_svg(sizes));
    std::cerr << "assess: " << out << "/memory_vs_size.svg (" << sizes.size() << " records)\n";
    return 0;
  }
  Setup s;
  s.model = a.get("model");
  s.task = a.get("task");
  PEFT_CHECK(s.task == "nlg" || s.task == "nlu" || s.task == "mt", "option --task: expected nlg, nlu or mt, got '",
             s.task, "'");
  s.train = a.get("train");
  s.eval = a.get("eval");
  s.out = a.get("out");
  for (auto* f : {&s.train, &s.eval})
    PEFT_CHECK(fs::exists(*f), "assess: data file ", *f, " does not exist");
  s.steps = a.get_int("budget_steps", 200);
  s.batch = a.get_int("batch", 8);
  s.max_length = a.get_int("max_length", 192);
  s.max_new_tokens = a.get_int("max_new_tokens", 48);
  s.gen_examples = a.get_int("gen_examples", 50);
  const int64_t seeds = a.get_int("seeds", 1);
  PEFT_CHECK(s.steps > 0 && s.batch > 0 && seeds > 0 && s.gen_examples >= 0,
             "assess: --budget-steps, --batch and --seeds must be positive");
  for (auto& [k, v] : a.options())
    if (std::find(kOwn.begin(), kOwn.end(), k) == kOwn.end()) s.passthrough.emplace_back(k, v);
  s.exe = self_exe("assess");
  {
    auto m = load_model(s.model);
    s.num_layers = m->dims().num_layers;
  }
  const auto labels = resolve_methods(a.get("methods", "all"), s.model);
  fs::create_directories(s.out);

  // The matrix, seed-major so that a first complete pass over the methods comes early.
  struct Cell {
    std::string label;
    int64_t seed;
    fs::path dir;
  };
  std::vector<Cell> cells;
  for (int64_t k = 0; k < seeds; ++k)
    for (auto& l : labels) cells.push_back({l, 42 + k, fs::path(s.out) / "cells" / l / ("seed" + std::to_string(42 + k))});
  std::vector<nlohmann::json> results;
  size_t todo = 0;
  for (auto& c : cells) todo += !fs::exists(c.dir / "result.json");
  std::cerr << "assess: " << labels.size() << " rows x " << seeds << " seeds = " << cells.size() << " cells, " << todo
            << " to run (" << cells.size() - todo << " finished earlier)\n";
  const auto t0 = std::chrono::steady_clock::now();
  size_t done_now = 0, index = 0;
  for (auto& c : cells) {
    ++index;
    const fs::path result_file = c.dir / "result.json";
    if (fs::exists(result_file)) {
      results.push_back(read_json(result_file.string()));
      continue;
    }
    std::cerr << "assess [" << index << "/" << cells.size() << "] " << c.label << " seed " << c.seed << " ..."
              << std::flush;
    auto r = run_cell(s, c.label, c.seed, c.dir);
    write_json(result_file.string(), r);  // atomic: the cell counts as finished only now
    results.push_back(r);
    ++done_now;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double rate = done_now / el;
    std::cerr << " done in " << std::fixed << std::setprecision(1) << r["train_wall_s"].get<double>() << " s | "
              << done_now << "/" << todo << " cells, " << std::setprecision(3) << rate * 60 << " cells/min, ETA "
              << clock_text((todo - done_now) / rate) << "\n";
  }
  const std::string primary = a.get("primary", default_primary(s.task, results));
  nlohmann::json header = {{"model", s.model},       {"task", s.task},   {"train", s.train},
                           {"eval", s.eval},         {"budget_steps", s.steps}, {"batch", s.batch},
                           {"max_length", s.max_length}, {"seeds", seeds}, {"primary_metric", primary},
                           {"passthrough", nlohmann::json::object()}};
  for (auto& [k, v] : s.passthrough) header["passthrough"][k] = v;
  auto rows = aggregate_rows(labels, results);
  write_assessment(s.out, header, rows, results, primary, sizes);
  std::cerr << "assess: " << s.out << "/assessment.md (table), assessment.json, assessment.csv, assessment.html\n";
  std::cout << read_file(join_path(s.out, "assessment.md"));
  return 0;
}

}  // namespace

PEFT_REGISTER_COMMAND("assess",
                      "--model DIR --task nlg|nlu|mt --train FILE --eval FILE --methods a,b|all --out DIR "
                      "[--budget-steps N] [--seeds K] [--batch B] [--memory-vs-size FILE]: the survey's method "
                      "comparison (trainable %, peak memory, tokens/s, quality), resumable",
                      run_assess);

}  // namespace peft::cli
