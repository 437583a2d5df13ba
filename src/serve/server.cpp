#include "serve/server.h"

#include <httplib.h>

#include <atomic>
#include <csignal>
#include <ctime>
#include <thread>

#include "peft/error.h"
#include "serve/openai_api.h"

namespace peft::serve {

using json = nlohmann::json;

struct Server::Impl {
  Engine& engine;
  ServerOptions opts;
  httplib::Server http;
  int port = -1;
  std::atomic<int64_t> ids{0};
  std::atomic<int> in_flight{0};  // generation responses not yet fully written
  std::atomic<bool> stop_requested{false}, run_entered{false}, run_returned{false};

  Impl(Engine& e, ServerOptions o) : engine(e), opts(std::move(o)) {}

  std::string next_id(const char* prefix) {
    return std::string(prefix) + std::to_string(std::time(nullptr)) + "-" + std::to_string(++ids);
  }

  static void send_json(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(body.dump(), "application/json");
  }
  static void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status, error_body(e)); }

  ApiLimits limits() const { return {engine.context_length(), opts.max_tokens_limit}; }

  // Counts a response as in flight until it is written (stop() waits for them).
  struct InFlight {
    std::atomic<int>& n;
    explicit InFlight(std::atomic<int>& c) : n(c) { ++n; }
    ~InFlight() { --n; }
  };

  void generate(const httplib::Request& req, httplib::Response& res, bool chat) {
    auto guard = std::make_shared<InFlight>(in_flight);
    ParsedRequest pr;
    try {
      auto body = parse_body(req.body);
      pr = chat ? parse_chat(body, engine, limits(), opts.chat_template) : parse_completion(body, engine, limits());
    } catch (const ApiError& e) {
      return send_error(res, e);
    }
    auto h = std::make_shared<RequestHandle>();
    switch (engine.submit(pr.gen, h)) {
      case Engine::Admit::Ok:
        break;
      case Engine::Admit::QueueFull:
        return send_error(res, ApiError(429, "The server is busy: the request queue is full; retry later", "", "queue_full",
                                        "rate_limit_error"));
      case Engine::Admit::Closed:
        return send_error(res, ApiError(503, "The server is shutting down", "", "shutting_down", "server_error"));
    }
    const std::string id = next_id(chat ? "chatcmpl-" : "cmpl-");
    const int64_t created = static_cast<int64_t>(std::time(nullptr));
    if (!pr.stream) {
      std::string text;
      while (!h->wait(&text, std::chrono::milliseconds(1000))) {}
      auto r = h->result();
      if (r.finish_reason == "error")
        return send_error(res, ApiError(r.error_status ? r.error_status : 500, r.error, "",
                                        r.error_status == 404 ? "model_not_found" : "",
                                        r.error_status >= 500 ? "server_error" : "invalid_request_error"));
      if (r.finish_reason == "cancelled")
        return send_error(res, ApiError(503, "The request was cancelled: the server is shutting down", "", "shutting_down",
                                        "server_error"));
      return send_json(res, 200, completion_response(pr, id, created, text, r));
    }
    // Server-sent events: one `data: {chunk}` per piece of text, the finish chunk, [DONE].
    struct StreamState {
      bool first = true, closed = false;
    };
    auto st = std::make_shared<StreamState>();
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [h, pr, id, created, st](size_t, httplib::DataSink& sink) {
          auto send = [&](const json& j) {
            std::string line = "data: " + j.dump() + "\n\n";
            return sink.write(line.data(), line.size());
          };
          if (st->closed) return false;
          std::string text;
          const bool finished = h->wait(&text, std::chrono::milliseconds(50));
          if (!text.empty() || (st->first && pr.chat && !finished)) {
            if (!send(stream_chunk(pr, id, created, text, "", st->first))) {
              h->cancel();  // the client went away: free its slot
              return false;
            }
            st->first = false;
          } else if (!finished && !sink.is_writable()) {
            h->cancel();
            return false;
          }
          if (!finished) return true;
          auto r = h->result();
          bool ok;
          if (r.finish_reason == "error") {
            ok = send(error_body(ApiError(r.error_status ? r.error_status : 500, r.error, "", "",
                                          r.error_status >= 500 ? "server_error" : "invalid_request_error")));
          } else {
            ok = send(stream_chunk(pr, id, created, "", r.finish_reason, st->first));
            if (ok && pr.include_usage) ok = send(stream_chunk(pr, id, created, "", "", false, &r));
          }
          static const std::string done = "data: [DONE]\n\n";
          if (ok) ok = sink.write(done.data(), done.size());
          st->closed = true;
          if (ok) sink.done();
          return ok;
        },
        [h, guard](bool success) {
          if (!success) h->cancel();
        });
  }

  void models(httplib::Response& res) {
    const int64_t created = static_cast<int64_t>(std::time(nullptr));
    json data = json::array();
    data.push_back({{"id", engine.base_name()},
                    {"object", "model"},
                    {"created", created},
                    {"owned_by", "peft.cpp"},
                    {"root", engine.base_name()},
                    {"parent", nullptr},
                    {"max_model_len", engine.context_length()}});
    for (auto& a : engine.adapter_names())
      data.push_back({{"id", a},
                      {"object", "model"},
                      {"created", created},
                      {"owned_by", "peft.cpp"},
                      {"root", a},
                      {"parent", engine.base_name()},
                      {"max_model_len", engine.context_length()}});
    send_json(res, 200, {{"object", "list"}, {"data", data}});
  }

  static std::string string_field(const json& b, const char* k) {
    if (!b.contains(k) || b[k].is_null()) throw ApiError(400, std::string("'") + k + "' is required", k);
    if (!b[k].is_string() || b[k].get<std::string>().empty())
      throw ApiError(400, std::string("'") + k + "' must be a non-empty string", k);
    return b[k].get<std::string>();
  }

  void load_unload(const httplib::Request& req, httplib::Response& res, bool load) {
    try {
      auto b = parse_body(req.body);
      const std::string name = string_field(b, "lora_name");
      if (load) {
        const std::string path = string_field(b, "lora_path");
        try {
          engine.load_adapter(name, path);
        } catch (const std::exception& e) {
          throw ApiError(400, std::string("Cannot load adapter '") + name + "' from " + path + ": " + e.what(),
                         "lora_path");
        }
        res.status = 200;
        res.set_content("Success: LoRA adapter '" + name + "' added successfully.", "text/plain");
      } else {
        if (!engine.has_model(name) || name == engine.base_name())
          throw ApiError(404, "The adapter `" + name + "` is not loaded.", "lora_name", "model_not_found");
        try {
          engine.unload_adapter(name);
        } catch (const std::exception& e) {
          throw ApiError(400, e.what(), "lora_name");
        }
        res.status = 200;
        res.set_content("Success: LoRA adapter '" + name + "' removed successfully.", "text/plain");
      }
    } catch (const ApiError& e) {
      send_error(res, e);
    }
  }

  void routes() {
    auto wrap = [this](const std::string& path, std::function<void(const httplib::Request&, httplib::Response&)> f) {
      return [this, path, f](const httplib::Request& req, httplib::Response& res) {
        try {
          f(req, res);
        } catch (const ApiError& e) {
          send_error(res, e);
        } catch (const std::exception& e) {
          send_error(res, ApiError(500, std::string("internal error: ") + e.what(), "", "", "server_error"));
        }
        engine.metrics().http_request(path, res.status);
      };
    };
    http.Get("/health", wrap("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (engine.closed())
        send_json(res, 503, {{"status", "shutting down"}});
      else
        send_json(res, 200, {{"status", "ok"}});
    }));
    http.Get("/v1/models", wrap("/v1/models", [this](const httplib::Request&, httplib::Response& res) { models(res); }));
    http.Post("/v1/completions", wrap("/v1/completions", [this](const httplib::Request& q, httplib::Response& s) {
      generate(q, s, false);
    }));
    http.Post("/v1/chat/completions", wrap("/v1/chat/completions", [this](const httplib::Request& q, httplib::Response& s) {
      generate(q, s, true);
    }));
    http.Post("/v1/load_lora_adapter", wrap("/v1/load_lora_adapter", [this](const httplib::Request& q, httplib::Response& s) {
      load_unload(q, s, true);
    }));
    http.Post("/v1/unload_lora_adapter",
              wrap("/v1/unload_lora_adapter", [this](const httplib::Request& q, httplib::Response& s) {
                load_unload(q, s, false);
              }));
    http.Get("/metrics", wrap("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.status = 200;
      res.set_content(engine.metrics().render(), "text/plain; version=0.0.4");
    }));
    // Unknown routes, wrong methods, oversized bodies: an OpenAI-style body for every error
    // that no handler wrote.
    http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      std::string msg = res.status == 404   ? "Not found: " + req.method + " " + req.path
                        : res.status == 413 ? "The request body is larger than the limit of " +
                                                  std::to_string(opts.max_body_bytes) + " bytes"
                                            : "HTTP error " + std::to_string(res.status);
      send_json(res, res.status, error_body(ApiError(res.status, msg, "", res.status == 404 ? "not_found" : "")));
    });
  }
};

Server::Server(Engine& engine, ServerOptions opts) : impl_(std::make_unique<Impl>(engine, std::move(opts))) {
  std::signal(SIGPIPE, SIG_IGN);  // a client that hangs up mid-stream must not end the process
  auto& o = impl_->opts;
  const size_t n = o.threads > 0 ? static_cast<size_t>(o.threads) : 76;
  impl_->http.new_task_queue = [n] { return new httplib::ThreadPool(n); };
  impl_->http.set_payload_max_length(o.max_body_bytes);
  impl_->http.set_read_timeout(30);
  impl_->http.set_write_timeout(30);
  impl_->routes();
}

Server::~Server() { stop(); }

int Server::bind() {
  auto& o = impl_->opts;
  if (o.port == 0) {
    impl_->port = impl_->http.bind_to_any_port(o.host);
    PEFT_CHECK(impl_->port > 0, "serve: cannot bind to any port on ", o.host);
  } else {
    PEFT_CHECK(impl_->http.bind_to_port(o.host, o.port), "serve: cannot listen on ", o.host, ":", o.port,
               " (in use, or not an address of this machine)");
    impl_->port = o.port;
  }
  return impl_->port;
}

void Server::run() {
  PEFT_CHECK(impl_->port > 0, "serve: Server::run() before bind()");
  impl_->run_entered = true;
  if (!impl_->stop_requested) impl_->http.listen_after_bind();
  impl_->run_returned = true;
}

void Server::stop() {
  if (!impl_) return;
  impl_->stop_requested = true;
  // Responses being written (a stream's last chunks after the engine finished it) get up to 5 s.
  for (int i = 0; i < 500 && impl_->in_flight > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  // run() may not have started listening yet: stop until it has returned.
  while (impl_->run_entered && !impl_->run_returned) {
    impl_->http.stop();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

int Server::port() const { return impl_->port; }

}  // namespace peft::serve
