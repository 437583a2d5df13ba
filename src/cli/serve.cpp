// `peft serve`: an OpenAI-compatible HTTP server over one base model and any number of
// adapters, with continuous batching (docs/SERVE.md).
//
//   peft serve --model assets/stories260K --adapter a=out/lora_a --adapter b=out/lora_b --port 8080
//   curl -s localhost:8080/v1/completions -d '{"model":"a","prompt":"Once upon a time","max_tokens":32}'
//
// SIGTERM / SIGINT: new requests get 503, running ones finish for up to --drain_timeout seconds
// (then they are cancelled), and the process exits 0.
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "cli/command.h"
#include "cli/model_args.h"
#include "peft/error.h"
#include "peft/io.h"
#include "peft/tokenizer.h"
#include "serve/engine.h"
#include "serve/server.h"

namespace peft::cli {
namespace {

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  PEFT_CHECK(f, "option --chat_template: cannot read ", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int g_stop_pipe[2] = {-1, -1};
extern "C" void on_stop_signal(int sig) {
  const char c = static_cast<char>(sig);
  ssize_t w = write(g_stop_pipe[1], &c, 1);
  (void)w;
}

int run_serve(Args& a) {
  // SIGTERM / SIGINT: a handler writes the signal number to a pipe that the watcher thread reads
  // (a self-pipe: async-signal-safe, and it works whichever thread the signal lands on; LibTorch
  // starts threads before this point that a signal mask set here would not cover).
  PEFT_CHECK(pipe(g_stop_pipe) == 0, "peft serve: cannot create the signal pipe");
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  a.reject_unknown({"model", "adapter", "host", "port", "dtype", "quantize", "double_quant", "compute_dtype",
                    "tokenizer", "chat_template", "served_model_name", "max_batch", "max_queue", "max_tokens_limit",
                    "drain_timeout", "threads"});
  const std::string model_dir = a.get("model");
  // --adapter NAME=DIR (served under NAME); every other option loads the base as elsewhere.
  std::vector<std::pair<std::string, std::string>> adapters;
  for (auto& spec : a.get_all("adapter")) {
    auto eq = spec.find('=');
    PEFT_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < spec.size(), "option --adapter: expected NAME=DIR, got '",
               spec, "'");
    adapters.emplace_back(spec.substr(0, eq), spec.substr(eq + 1));
  }
  std::vector<std::string> base_argv;
  for (auto& [k, v] : a.options())
    if (k != "adapter") base_argv.insert(base_argv.end(), {"--" + k, v});
  Args base_args(base_argv);
  LoadedModel lm = load_model_from_args(base_args);
  serve::check_servable(*lm.model);

  std::string tok_dir = std::filesystem::is_directory(model_dir) ? model_dir
                                                                 : std::filesystem::path(model_dir).parent_path().string();
  std::shared_ptr<const Tokenizer> tok = load_tokenizer(a.get("tokenizer", tok_dir));
  std::string chat_template = a.has("chat_template") ? read_text(a.get("chat_template")) : tok->chat_template;

  serve::EngineOptions eo;
  eo.base_name = a.get("served_model_name", std::filesystem::path(model_dir).filename().string());
  if (eo.base_name.empty()) eo.base_name = std::filesystem::path(model_dir).parent_path().filename().string();
  eo.max_batch = a.get_int("max_batch", 8);
  eo.max_queue = a.get_int("max_queue", 64);
  const int64_t drain_s = a.get_int("drain_timeout", 30);
  PEFT_CHECK(drain_s >= 0, "option --drain_timeout must be >= 0");

  serve::Engine engine(lm.model, tok, eo, adapters);
  serve::ServerOptions so;
  so.host = a.get("host", "127.0.0.1");
  so.port = static_cast<int>(a.get_int("port", 8080));
  PEFT_CHECK(so.port >= 0 && so.port < 65536, "option --port must be in [0, 65535]");
  so.max_tokens_limit = a.get_int("max_tokens_limit", 0);
  so.chat_template = chat_template;
  so.threads = static_cast<int>(a.get_int("threads", eo.max_batch + eo.max_queue + 4));
  serve::Server server(engine, so);
  const int port = server.bind();
  std::cout << "peft serve: model '" << eo.base_name << "'";
  for (auto& [n, d] : adapters) std::cout << ", adapter '" << n << "'";
  std::cout << "; max_batch " << eo.max_batch << ", max_queue " << eo.max_queue << ", context "
            << engine.context_length() << "\npeft serve: listening on http://" << so.host << ":" << port << std::endl;

  std::atomic<bool> stopping{false};
  std::thread watcher([&] {
    char c = 0;
    while (read(g_stop_pipe[0], &c, 1) < 0 && errno == EINTR) {
    }
    const int sig = c;
    if (stopping || sig == 0) return;  // run() ended on its own
    std::cout << "peft serve: signal " << sig << ", draining (up to " << drain_s << " s)" << std::endl;
    engine.shutdown(std::chrono::seconds(drain_s));
    server.stop();
  });
  server.run();
  stopping = !engine.closed();
  if (stopping) {
    const char zero = 0;  // wakes the watcher: no signal came
    ssize_t w = write(g_stop_pipe[1], &zero, 1);
    (void)w;
  }
  watcher.join();
  engine.shutdown(std::chrono::seconds(0));
  std::cout << "peft serve: stopped" << std::endl;
  return 0;
}

PEFT_REGISTER_COMMAND("serve", "OpenAI-compatible HTTP server: one base, many adapters, continuous batching", run_serve);

}  // namespace
}  // namespace peft::cli
