// The HTTP side of `peft serve` (cpp-httplib): OpenAI-compatible routes over a serve::Engine.
//
//   GET  /health                 200 {"status":"ok"} (503 while shutting down)
//   GET  /v1/models              the base and every adapter
//   POST /v1/completions         prompt -> text (stream: server-sent events, then data: [DONE])
//   POST /v1/chat/completions    messages through the chat template -> assistant message
//   POST /v1/load_lora_adapter   {"lora_name", "lora_path"}   (vLLM's names)
//   POST /v1/unload_lora_adapter {"lora_name"}
//   GET  /metrics                Prometheus text format
// Handler threads only validate, enqueue and wait; the engine thread does all model work.
//
//   serve::Server server(engine, {"127.0.0.1", 0});
//   int port = server.bind();       // 0: a free port
//   std::thread t([&] { server.run(); });  ...  server.stop(); t.join();
#pragma once
#include <memory>
#include <string>

#include "serve/engine.h"

namespace peft::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                 // 0: any free port (bind() returns it)
  int64_t max_tokens_limit = 0;    // largest max_tokens (0: the context length)
  std::string chat_template;       // Jinja; empty: none (chat requests get a 400)
  size_t max_body_bytes = 8 << 20; // larger bodies: 413
  int threads = 0;                 // HTTP worker threads, each holds one waiting request (0: 76)
};

class Server {
 public:
  Server(Engine& engine, ServerOptions opts);
  ~Server();
  /// Binds the listening socket; returns the port. Throws peft::Error when it cannot.
  int bind();
  /// Serves until stop() (call bind() first).
  void run();
  /// Stops accepting and returns run() once handlers are done. Safe from any thread.
  void stop();
  int port() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace peft::serve
