// Counters, gauges and histograms of `peft serve`, written as Prometheus text exposition
// format 0.0.4 (# HELP / # TYPE lines, cumulative `_bucket{le=...}` rows, `_sum`, `_count`).
// Thread-safe: the engine thread and HTTP handlers update it, GET /metrics renders it.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace peft::serve {

class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)), counts_(bounds_.size(), 0) {}
  void observe(double v);
  /// Lines `<name>_bucket{le="..."} n` (cumulative, then +Inf), `<name>_sum`, `<name>_count`.
  std::string render(const std::string& name) const;
  int64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket (not cumulative)
  int64_t count_ = 0;
  double sum_ = 0;
};

class Metrics {
 public:
  Metrics();
  void http_request(const std::string& path, int status);
  void request_finished(const std::string& model, const std::string& finish_reason, int64_t prompt_tokens,
                        int64_t completion_tokens, double latency_s, double first_token_s);
  void step(int64_t batch_size);
  void set_queue(int64_t queued, int64_t running);
  std::string render() const;

 private:
  mutable std::mutex m_;
  std::map<std::pair<std::string, int>, int64_t> http_;                    // (path, status) -> n
  std::map<std::pair<std::string, std::string>, int64_t> finished_;        // (model, reason) -> n
  int64_t prompt_tokens_ = 0, generation_tokens_ = 0, steps_ = 0, queued_ = 0, running_ = 0, last_batch_ = 0;
  Histogram latency_, first_token_, batch_;
};

}  // namespace peft::serve
