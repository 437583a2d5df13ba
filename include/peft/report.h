// Training progress and reports: a terminal progress bar, a JSONL metrics log, and a
// self-contained SVG/HTML report of the logged curves.
//
//   peft::ProgressBar bar(total_steps);
//   peft::JsonlLogger log(out_dir + "/metrics.jsonl");
//   for (step = 1..total) {
//     ...; bar.update(step, loss, batch.num_tokens);
//     log.log({{"step", step}, {"loss", loss}, {"lr", lr}});
//   }
//   log.log({{"step", step}, {"eval_loss", eval_loss}, {"eval_bleu", bleu}});
//   bar.finish();
//   peft::write_training_report(out_dir, peft::read_jsonl(out_dir + "/metrics.jsonl"));
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>
#include <vector>

namespace peft {

struct ProgressOptions {
  std::ostream* out = nullptr;  // nullptr = std::cerr
  int tty = -1;                 // -1: detect (isatty(stderr)); 1: redraw with \r; 0: one line every `every` steps
  int64_t every = 10;           // non-TTY: print on step 1, every `every` steps and the last step
  int width = 30;               // bar characters
};

/// "step 120/1000 [###-------] loss 2.3456 | 1234 tok/s | ETA 01:02:03" on stderr.
class ProgressBar {
 public:
  explicit ProgressBar(int64_t total_steps, ProgressOptions opt = {});
  /// Records step `step` (1-based) with its loss and the tokens it processed; redraws/prints.
  /// `extra` is appended to the line (e.g. "lr 2e-4").
  void update(int64_t step, double loss, int64_t tokens, const std::string& extra = "");
  /// Ends the TTY line with a newline (no-op otherwise); safe to call twice.
  void finish();
  /// The text of one status line (without \r or newline), for tests and custom sinks.
  std::string line(int64_t step, double loss, double tokens_per_s, double eta_s, const std::string& extra) const;
  /// "HH:MM:SS" (or "MM:SS" under an hour); "--:--" for a negative/unknown time.
  static std::string format_duration(double seconds);

 private:
  int64_t total_;
  ProgressOptions opt_;
  bool tty_;
  bool open_line_ = false;
  int64_t first_step_ = -1, tokens_ = 0;
  std::chrono::steady_clock::time_point start_;
};

/// Appends one JSON object per line to a file, flushing after each (a crash loses nothing logged).
class JsonlLogger {
 public:
  /// Creates parent folders; append = false truncates an existing file. Errors name the file.
  explicit JsonlLogger(const std::string& path, bool append = true);
  ~JsonlLogger();
  JsonlLogger(const JsonlLogger&) = delete;
  JsonlLogger& operator=(const JsonlLogger&) = delete;
  /// Writes `record` (must be an object) as one line and flushes.
  void log(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
};

/// Reads a JSONL file (blank lines skipped); a bad line is a peft::Error "FILE:LINE: ...".
std::vector<nlohmann::json> read_jsonl(const std::string& path);

/// Writes `dir`/report.svg (one chart per metric vs "step": "loss"/"train_loss" and
/// "eval_loss" share the loss chart; every other numeric key gets its own) and `dir`/report.html
/// (the SVG inline, a summary table of every metric, and the eval records), atomically.
/// Records without a numeric "step" are ignored. Returns the SVG text.
std::string write_training_report(const std::string& dir, const std::vector<nlohmann::json>& records,
                                  const std::string& title = "Training report");

}  // namespace peft
