// The engine of `peft serve`: one thread owns the model and runs continuous batching.
//
// HTTP handlers only submit() requests into a bounded queue and read their RequestHandle. The
// engine thread, between decode steps, runs adapter load/unload commands, admits queued requests
// while the batch has room (each is prefilled by its own forward, its first token sampled), then
// runs ONE forward for every running sequence whatever its adapter (RowForward: row i with
// adapter i), samples one token per row, and retires sequences that finished (EOS, a stop string,
// max_tokens) or whose client went away. Sequences thus join and leave at token boundaries. Each
// sequence keeps its own KV cache; a step stacks them left-padded (serve/batch_cache.h).
//
//   serve::Engine engine(peft::load_model(dir), tokenizer, {"stories260K", 8, 64}, {{"a", "adapters/a"}});
//   auto h = std::make_shared<serve::RequestHandle>();
//   engine.submit(req, h);                 // Admit::Ok, QueueFull or Closed
//   std::string text; while (!h->wait(&text, 100ms)) {}   // h->result(): finish reason, usage
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "peft/model.h"
#include "peft/generate.h"
#include "peft/tokenizer.h"
#include "peft/tuner.h"
#include "serve/metrics.h"
#include "serve/row_forward.h"

namespace peft::serve {

struct GenRequest {
  std::string model;  // the base's served name or an adapter's
  std::vector<int64_t> prompt;
  int64_t max_tokens = 16;
  SamplingOptions sampling;
  uint64_t seed = 0;  // the request's own generator (sampling only)
  std::vector<std::string> stop;  // the text ends before the first occurrence of any
};

/// One request's output, written by the engine thread and read by one HTTP handler.
class RequestHandle {
 public:
  struct Result {
    std::string finish_reason;  // "stop" (EOS or a stop string), "length", "cancelled", "error"
    std::string error;          // finish_reason "error": the message
    int error_status = 0;       // and the HTTP status it maps to
    int64_t prompt_tokens = 0, completion_tokens = 0;
  };
  /// Waits up to `timeout` for new text or the end; appends what is new to *text. True once
  /// the request is finished and all its text taken.
  bool wait(std::string* text, std::chrono::milliseconds timeout);
  /// The client is gone: the engine frees the slot at the next token boundary.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  Result result() const;

  // Engine side.
  void push(const std::string& text);
  void finish(Result r);

 private:
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::string pending_;
  bool finished_ = false;
  Result result_;
  std::atomic<bool> cancelled_{false};
};

struct EngineOptions {
  std::string base_name = "base";  // the model id of the plain base
  int64_t max_batch = 8;           // running sequences per step
  int64_t max_queue = 64;          // waiting requests; submit() beyond: QueueFull
  std::function<void()> before_forward;  // called on the engine thread before each forward (tests, tracing)
};

/// Errors (peft::Error) unless `model` is a decoder-only causal LM (what the engine batches).
void check_servable(const PretrainedModel& model);

class Engine {
 public:
  /// Loads `adapters` (served name, folder) into a PeftModel over `base` and starts the engine
  /// thread. Refuses encoder-decoders and heads other than causal LM.
  Engine(ModelPtr base, std::shared_ptr<const Tokenizer> tok, EngineOptions opts,
         const std::vector<std::pair<std::string, std::string>>& adapters = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  enum class Admit { Ok, QueueFull, Closed };
  Admit submit(GenRequest req, std::shared_ptr<RequestHandle> h);

  /// Run on the engine thread between steps; block until done; throw peft::Error on failure
  /// (unknown or used name, bad folder, an adapter kind that cannot be batched).
  void load_adapter(const std::string& name, const std::string& dir);
  /// Errors when `name` is unknown or a queued or running request uses it.
  void unload_adapter(const std::string& name);

  bool has_model(const std::string& name) const;
  std::vector<std::string> adapter_names() const;
  const std::string& base_name() const { return opts_.base_name; }
  /// Positions the model can hold (max_position_embeddings / n_positions).
  int64_t context_length() const { return context_; }
  const Tokenizer& tokenizer() const { return *tok_; }
  Metrics& metrics() { return metrics_; }

  /// Takes no new requests; lets queued and running ones finish for up to `grace`, cancels the
  /// rest, stops the thread. Idempotent.
  void shutdown(std::chrono::milliseconds grace);
  bool closed() const { return closed_; }

 private:
  struct Seq;
  void loop();
  void run_commands();
  /// Queues `task` for the engine thread (between steps), wakes it, waits; rethrows its error.
  void run_on_engine(std::packaged_task<void()> task);
  void admit();
  void prefill(Seq& s);
  void decode_step();
  void retire();
  void take_token(Seq& s, int64_t token);
  void finish(Seq& s, const std::string& reason, const std::string& error = "", int status = 0);
  void check_adapter_folder(const std::string& dir) const;
  void check_row_forward(const std::string& adapter);
  void update_gauges();

  ModelPtr base_;
  std::shared_ptr<PeftModel> pm_;
  std::shared_ptr<const Tokenizer> tok_;
  EngineOptions opts_;
  RowForward forward_;
  int64_t context_ = 0;
  Metrics metrics_;

  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Seq>> queue_;
  std::deque<std::packaged_task<void()>> commands_;
  std::map<std::string, std::string> served_;  // served adapter name -> PeftModel adapter name
  int64_t loads_ = 0;
  std::atomic<bool> closed_{false};
  bool stop_ = false, cancel_all_ = false;
  std::atomic<int64_t> running_count_{0};

  std::vector<std::unique_ptr<Seq>> running_;  // engine thread only
  std::thread thread_;
};

}  // namespace peft::serve
