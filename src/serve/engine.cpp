#include "serve/engine.h"

#include <torch/torch.h>

#include <algorithm>

#include "peft/error.h"
#include "serve/batch_cache.h"

namespace peft::serve {

using Clock = std::chrono::steady_clock;

// ---- RequestHandle --------------------------------------------------------------------------

bool RequestHandle::wait(std::string* text, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lk(m_);
  cv_.wait_for(lk, timeout, [&] { return finished_ || !pending_.empty(); });
  text->append(pending_);
  pending_.clear();
  return finished_;
}

RequestHandle::Result RequestHandle::result() const {
  std::lock_guard<std::mutex> g(m_);
  return result_;
}

void RequestHandle::push(const std::string& text) {
  if (text.empty()) return;
  {
    std::lock_guard<std::mutex> g(m_);
    pending_ += text;
  }
  cv_.notify_all();
}

void RequestHandle::finish(Result r) {
  {
    std::lock_guard<std::mutex> g(m_);
    result_ = std::move(r);
    finished_ = true;
  }
  cv_.notify_all();
}

// ---- a running sequence ---------------------------------------------------------------------

struct Engine::Seq {
  GenRequest req;
  std::shared_ptr<RequestHandle> h;
  std::string adapter;  // PeftModel adapter name or kBaseAdapter
  KVCache cache;
  int64_t next_input = -1;  // the token the next step feeds
  int64_t generated = 0;    // tokens sampled (a final EOS included)
  std::unique_ptr<StreamDecoder> dec;
  std::string text;   // decoded so far (cut at a stop string)
  size_t emitted = 0; // bytes of text handed to the client
  torch::Generator gen;
  Clock::time_point enqueued;
  double first_token_s = -1;
  bool done = false;
};

namespace {

int64_t context_of(const nlohmann::json& c) {
  for (const char* k : {"max_position_embeddings", "n_positions", "n_ctx"})
    if (c.contains(k) && c[k].is_number_integer() && c[k].get<int64_t>() > 0) return c[k].get<int64_t>();
  return 2048;
}

// Bytes at the end of `text` (after `from`) that could begin one of `stops`: held back from a
// stream until the next token shows whether a stop string follows.
size_t held_back(const std::string& text, size_t from, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (auto& s : stops)
    for (size_t k = std::min(s.size() - 1, text.size() - from); k > hold; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  return hold;
}

}  // namespace

// ---- Engine ---------------------------------------------------------------------------------

void check_servable(const PretrainedModel& m) {
  PEFT_CHECK(!m.is_encoder_decoder(), "serve: the model at ", m.name_or_path, " (", m.model_type(),
             ") is an encoder-decoder; peft serve runs decoder-only causal LMs (Llama, GPT-2 families)");
  PEFT_CHECK(m.task() == TaskType::CausalLM, "serve: the model at ", m.name_or_path, " has a ",
             task_type_name(m.task()), " head; peft serve needs a causal LM");
}

Engine::Engine(ModelPtr base, std::shared_ptr<const Tokenizer> tok, EngineOptions opts,
               const std::vector<std::pair<std::string, std::string>>& adapters)
    : base_(std::move(base)), tok_(std::move(tok)), opts_(std::move(opts)) {
  PEFT_CHECK(base_, "serve: no model");
  check_servable(*base_);
  PEFT_CHECK(opts_.max_batch >= 1, "serve: --max_batch must be >= 1, got ", opts_.max_batch);
  PEFT_CHECK(opts_.max_queue >= 0, "serve: --max_queue must be >= 0, got ", opts_.max_queue);
  context_ = context_of(base_->config);
  pm_ = std::make_shared<PeftModel>(base_);
  for (auto& [name, dir] : adapters) {
    PEFT_CHECK(!name.empty() && name != opts_.base_name && name != kBaseAdapter && !served_.count(name),
               "serve: adapter name '", name, "' is empty, the base's name or given twice");
    check_adapter_folder(dir);
    pm_->load_adapter(dir, name);
    served_[name] = name;
  }
  pm_->eval();
  auto pm = pm_;
  forward_ = [pm](const ModelInput& in, const std::vector<std::string>& rows) { return pm->forward(in, rows); };
  for (auto& kv : served_) check_row_forward(kv.second);
  if (opts_.before_forward) {
    auto inner = forward_;
    auto hook = opts_.before_forward;
    forward_ = [inner, hook](const ModelInput& in, const std::vector<std::string>& rows) {
      hook();
      return inner(in, rows);
    };
  }
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() { shutdown(std::chrono::milliseconds(0)); }

void Engine::check_adapter_folder(const std::string& dir) const {
  auto cfg = read_adapter_config(dir);
  PEFT_CHECK(cfg.contains("peft_type") && cfg["peft_type"].is_string(), dir, "/adapter_config.json: no peft_type");
  auto tuner = find_tuner(cfg["peft_type"].get<std::string>());
  PEFT_CHECK(tuner->targets_modules(), dir, "/adapter_config.json: peft_type ", cfg["peft_type"].get<std::string>(),
             " changes the model input (virtual tokens or a cache prefix); peft serve batches only adapters "
             "that act on modules (LoRA family, IA3, bottleneck adapters, ...)");
}

// One token through the mixed-adapter forward: an adapter whose method cannot act on its own
// rows of a batch is refused at load (and removed again), not at its first request.
void Engine::check_row_forward(const std::string& adapter) {
  torch::NoGradGuard no_grad;
  ModelInput in;
  in.input_ids = torch::zeros({2, 1}, torch::kLong);
  try {
    forward_(in, {adapter, kBaseAdapter});
  } catch (const std::exception& e) {
    pm_->delete_adapter(adapter);
    fail("adapter '", adapter, "' cannot share a batch with other adapters: ", e.what());
  }
}

Engine::Admit Engine::submit(GenRequest req, std::shared_ptr<RequestHandle> h) {
  auto s = std::make_unique<Seq>();
  s->req = std::move(req);
  s->h = std::move(h);
  s->enqueued = Clock::now();
  {
    std::lock_guard<std::mutex> g(m_);
    if (closed_) return Admit::Closed;
    if (static_cast<int64_t>(queue_.size()) >= opts_.max_queue &&
        running_count_ + static_cast<int64_t>(queue_.size()) >= opts_.max_batch)
      return Admit::QueueFull;
    queue_.push_back(std::move(s));
    metrics_.set_queue(static_cast<int64_t>(queue_.size()), running_count_);
  }
  cv_.notify_all();
  return Admit::Ok;
}

void Engine::run_on_engine(std::packaged_task<void()> task) {
  auto fut = task.get_future();
  {
    std::lock_guard<std::mutex> g(m_);
    PEFT_CHECK(!stop_, "the server is shutting down");
    commands_.push_back(std::move(task));
  }
  cv_.notify_all();
  fut.get();
}

void Engine::load_adapter(const std::string& name, const std::string& dir) {
  run_on_engine(std::packaged_task<void()>([this, name, dir] {
    {
      std::lock_guard<std::mutex> g(m_);
      PEFT_CHECK(!name.empty() && name != opts_.base_name && name != kBaseAdapter,
                 "lora_name '", name, "' is empty or the base model's name");
      PEFT_CHECK(!served_.count(name), "an adapter named '", name, "' is already loaded");
    }
    check_adapter_folder(dir);
    std::string internal = name;
    while (pm_->adapters().count(internal)) internal = name + "#" + std::to_string(++loads_);
    pm_->load_adapter(dir, internal);
    pm_->eval();
    check_row_forward(internal);
    std::lock_guard<std::mutex> g(m_);
    served_[name] = internal;
  }));
}

void Engine::unload_adapter(const std::string& name) {
  run_on_engine(std::packaged_task<void()>([this, name] {
    std::lock_guard<std::mutex> g(m_);
    auto it = served_.find(name);
    PEFT_CHECK(it != served_.end(), "no adapter named '", name, "' is loaded");
    int64_t users = 0;
    for (auto& s : running_) users += s->adapter == it->second;
    for (auto& s : queue_) users += s->req.model == name;
    PEFT_CHECK(users == 0, "adapter '", name, "' is in use by ", users, " request(s); unload it when they are done");
    pm_->delete_adapter(it->second);
    served_.erase(it);
  }));
}

bool Engine::has_model(const std::string& name) const {
  std::lock_guard<std::mutex> g(m_);
  return name == opts_.base_name || served_.count(name);
}

std::vector<std::string> Engine::adapter_names() const {
  std::lock_guard<std::mutex> g(m_);
  std::vector<std::string> out;
  for (auto& kv : served_) out.push_back(kv.first);
  return out;
}

void Engine::shutdown(std::chrono::milliseconds grace) {
  closed_ = true;
  if (!thread_.joinable()) return;
  const auto deadline = Clock::now() + grace;
  while (Clock::now() < deadline) {
    {
      std::lock_guard<std::mutex> g(m_);
      if (queue_.empty() && running_count_ == 0) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  {
    std::lock_guard<std::mutex> g(m_);
    cancel_all_ = true;
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Engine::update_gauges() {
  std::lock_guard<std::mutex> g(m_);
  metrics_.set_queue(static_cast<int64_t>(queue_.size()), running_count_);
}

void Engine::loop() {
  torch::NoGradGuard no_grad;  // thread-local: this thread runs every forward
  while (true) {
    run_commands();
    admit();
    if (running_.empty()) {
      std::unique_lock<std::mutex> lk(m_);
      if (stop_ && queue_.empty() && commands_.empty()) break;
      cv_.wait(lk, [&] { return stop_ || !queue_.empty() || !commands_.empty(); });
      continue;
    }
    decode_step();
    retire();
  }
  // Commands that arrived with the stop are answered rather than left hanging.
  run_commands();
}

void Engine::run_commands() {
  while (true) {
    std::packaged_task<void()> t;
    {
      std::lock_guard<std::mutex> g(m_);
      if (commands_.empty()) return;
      t = std::move(commands_.front());
      commands_.pop_front();
    }
    t();  // exceptions go to the caller's future
  }
}

void Engine::admit() {
  while (true) {
    std::unique_ptr<Seq> s;
    bool cancel = false;
    {
      std::lock_guard<std::mutex> g(m_);
      cancel = cancel_all_;
      if (queue_.empty() || (!cancel && static_cast<int64_t>(running_.size()) >= opts_.max_batch)) break;
      s = std::move(queue_.front());
      queue_.pop_front();
      ++running_count_;  // counted as running from here: a prefill in progress holds its slot
      if (!cancel) {
        if (s->req.model == opts_.base_name) {
          s->adapter = kBaseAdapter;
        } else if (auto it = served_.find(s->req.model); it != served_.end()) {
          s->adapter = it->second;
        }
      }
    }
    if (cancel || s->h->cancelled()) {
      finish(*s, "cancelled");
    } else if (s->adapter.empty()) {
      finish(*s, "error", "The model `" + s->req.model + "` does not exist.", 404);
    } else {
      prefill(*s);
    }
    if (!s->done) running_.push_back(std::move(s));  // a finished one gave its slot back in finish()
    update_gauges();
  }
  // Cancel everything running when shutting down past the grace period.
  bool cancel;
  {
    std::lock_guard<std::mutex> g(m_);
    cancel = cancel_all_;
  }
  if (cancel)
    for (auto& s : running_)
      if (!s->done) finish(*s, "cancelled");
  retire();
}

void Engine::prefill(Seq& s) {
  try {
    const int64_t P = static_cast<int64_t>(s.req.prompt.size());
    PEFT_CHECK(P > 0, "the prompt has no tokens");
    PEFT_CHECK(P + s.req.max_tokens <= context_, "This model's maximum context length is ", context_,
               " tokens. However, you requested ", P + s.req.max_tokens, " tokens (", P, " in the prompt, ",
               s.req.max_tokens, " for the completion).");
    s.gen = at::detail::createCPUGenerator(s.req.seed);
    s.dec = std::make_unique<StreamDecoder>(*tok_, s.req.prompt);
    ModelInput in;
    in.input_ids = torch::tensor(s.req.prompt, torch::kLong).unsqueeze(0);
    in.cache = &s.cache;
    auto out = forward_(in, {s.adapter});
    s.first_token_s = std::chrono::duration<double>(Clock::now() - s.enqueued).count();
    take_token(s, sample_token(out.logits[0][-1], s.req.sampling, s.gen));
  } catch (const Error& e) {
    finish(s, "error", e.what(), 400);
  } catch (const std::exception& e) {
    finish(s, "error", std::string("internal error during prefill: ") + e.what(), 500);
  }
}

void Engine::decode_step() {
  std::vector<Seq*> rows;
  for (auto& s : running_)
    if (!s->done) rows.push_back(s.get());
  if (rows.empty()) return;
  try {
    std::vector<const KVCache*> caches;
    std::vector<KVCache*> outs;
    std::vector<std::string> adapters;
    std::vector<int64_t> ids;
    for (auto* s : rows) {
      caches.push_back(&s->cache);
      outs.push_back(&s->cache);
      adapters.push_back(s->adapter);
      ids.push_back(s->next_input);
    }
    auto st = stack_caches(caches);
    ModelInput in;
    in.input_ids = torch::tensor(ids, torch::kLong).view({static_cast<int64_t>(rows.size()), 1});
    in.attention_mask = st.attention_mask;
    in.position_ids = st.position_ids;
    in.cache = &st.cache;
    auto out = forward_(in, adapters);
    split_caches(st, outs);
    metrics_.step(static_cast<int64_t>(rows.size()));
    auto last = out.logits.select(1, out.logits.size(1) - 1);
    for (size_t i = 0; i < rows.size(); ++i) take_token(*rows[i], sample_token(last[i], rows[i]->req.sampling, rows[i]->gen));
  } catch (const std::exception& e) {
    for (auto* s : rows) finish(*s, "error", std::string("internal error during decoding: ") + e.what(), 500);
  }
}

void Engine::take_token(Seq& s, int64_t token) {
  ++s.generated;
  if (token == tok_->eos_id) {
    finish(s, "stop");
    return;
  }
  const size_t before = s.text.size();
  s.text += s.dec->push(token);
  if (!s.req.stop.empty() && s.text.size() > before) {
    size_t cut = std::string::npos;
    for (auto& stop : s.req.stop) {
      size_t from = before >= stop.size() ? before - stop.size() + 1 : 0;
      size_t at = s.text.find(stop, from);
      if (at != std::string::npos) cut = std::min(cut, at);
    }
    if (cut != std::string::npos) {
      s.text.resize(cut);
      finish(s, "stop");
      return;
    }
  }
  if (s.generated >= s.req.max_tokens) {
    finish(s, "length");
    return;
  }
  s.next_input = token;
  const size_t upto = s.text.size() - held_back(s.text, s.emitted, s.req.stop);
  if (upto > s.emitted) {
    s.h->push(s.text.substr(s.emitted, upto - s.emitted));
    s.emitted = upto;
  }
}

void Engine::finish(Seq& s, const std::string& reason, const std::string& error, int status) {
  if (s.done) return;
  s.done = true;
  if (reason == "stop" || reason == "length") {
    if (s.text.size() > s.emitted) s.h->push(s.text.substr(s.emitted));
    s.emitted = s.text.size();
  }
  RequestHandle::Result r;
  r.finish_reason = reason;
  r.error = error;
  r.error_status = status;
  r.prompt_tokens = static_cast<int64_t>(s.req.prompt.size());
  r.completion_tokens = s.generated;
  const double latency = std::chrono::duration<double>(Clock::now() - s.enqueued).count();
  metrics_.request_finished(s.req.model, reason, r.prompt_tokens, r.completion_tokens, latency, s.first_token_s);
  s.cache = KVCache();
  // The slot is free before the client hears the answer: a client that sends its next request
  // the moment this one completes must not find the server still full (retire() runs later).
  --running_count_;
  update_gauges();
  s.h->finish(std::move(r));
}

void Engine::retire() {
  for (auto& s : running_)
    if (!s->done && s->h->cancelled()) finish(*s, "cancelled");
  auto gone = std::remove_if(running_.begin(), running_.end(), [](const std::unique_ptr<Seq>& s) { return s->done; });
  const auto n = std::distance(gone, running_.end());
  running_.erase(gone, running_.end());  // finish() already gave their slots back
  if (n) update_gauges();
}

}  // namespace peft::serve
