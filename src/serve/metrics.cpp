#include "serve/metrics.h"

#include <sstream>

namespace peft::serve {
namespace {

std::string num(double v) {
  std::ostringstream o;
  o.precision(17);
  o << v;
  return o.str();
}

// Label values escape backslash, double quote and newline (exposition format).
std::string label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void header(std::ostringstream& o, const std::string& name, const std::string& type, const std::string& help) {
  o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
}

}  // namespace

void Histogram::observe(double v) {
  for (size_t i = 0; i < bounds_.size(); ++i)
    if (v <= bounds_[i]) {
      ++counts_[i];
      break;
    }
  ++count_;
  sum_ += v;
}

std::string Histogram::render(const std::string& name) const {
  std::ostringstream o;
  int64_t cum = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cum += counts_[i];
    o << name << "_bucket{le=\"" << num(bounds_[i]) << "\"} " << cum << "\n";
  }
  o << name << "_bucket{le=\"+Inf\"} " << count_ << "\n" << name << "_sum " << num(sum_) << "\n"
    << name << "_count " << count_ << "\n";
  return o.str();
}

Metrics::Metrics()
    : latency_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      first_token_({0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}),
      batch_({1, 2, 4, 8, 16, 32, 64, 128, 256}) {}

void Metrics::http_request(const std::string& path, int status) {
  std::lock_guard<std::mutex> g(m_);
  ++http_[{path, status}];
}

void Metrics::request_finished(const std::string& model, const std::string& reason, int64_t prompt_tokens,
                               int64_t completion_tokens, double latency_s, double first_token_s) {
  std::lock_guard<std::mutex> g(m_);
  ++finished_[{model, reason}];
  prompt_tokens_ += prompt_tokens;
  generation_tokens_ += completion_tokens;
  latency_.observe(latency_s);
  if (first_token_s >= 0) first_token_.observe(first_token_s);
}

void Metrics::step(int64_t batch_size) {
  std::lock_guard<std::mutex> g(m_);
  ++steps_;
  last_batch_ = batch_size;
  batch_.observe(static_cast<double>(batch_size));
}

void Metrics::set_queue(int64_t queued, int64_t running) {
  std::lock_guard<std::mutex> g(m_);
  queued_ = queued;
  running_ = running;
}

std::string Metrics::render() const {
  std::lock_guard<std::mutex> g(m_);
  std::ostringstream o;
  header(o, "peft_http_requests_total", "counter", "HTTP requests answered, by path and status code.");
  for (auto& [k, n] : http_)
    o << "peft_http_requests_total{path=\"" << label(k.first) << "\",code=\"" << k.second << "\"} " << n << "\n";
  header(o, "peft_requests_finished_total", "counter", "Generation requests finished, by model and finish reason.");
  for (auto& [k, n] : finished_)
    o << "peft_requests_finished_total{model=\"" << label(k.first) << "\",finish_reason=\"" << label(k.second) << "\"} "
      << n << "\n";
  header(o, "peft_prompt_tokens_total", "counter", "Prompt tokens of finished requests.");
  o << "peft_prompt_tokens_total " << prompt_tokens_ << "\n";
  header(o, "peft_generation_tokens_total", "counter", "Tokens generated for finished requests.");
  o << "peft_generation_tokens_total " << generation_tokens_ << "\n";
  header(o, "peft_decode_steps_total", "counter", "Batched decode steps (one forward each).");
  o << "peft_decode_steps_total " << steps_ << "\n";
  header(o, "peft_queue_length", "gauge", "Requests waiting for a batch slot.");
  o << "peft_queue_length " << queued_ << "\n";
  header(o, "peft_running_sequences", "gauge", "Sequences in the running batch.");
  o << "peft_running_sequences " << running_ << "\n";
  header(o, "peft_batch_size", "gauge", "Rows of the last decode step.");
  o << "peft_batch_size " << last_batch_ << "\n";
  header(o, "peft_step_batch_size", "histogram", "Rows per decode step.");
  o << batch_.render("peft_step_batch_size");
  header(o, "peft_request_latency_seconds", "histogram", "Time from enqueue to the last token.");
  o << latency_.render("peft_request_latency_seconds");
  header(o, "peft_time_to_first_token_seconds", "histogram", "Time from enqueue to the first token.");
  o << first_token_.render("peft_time_to_first_token_seconds");
  return o.str();
}

}  // namespace peft::serve
