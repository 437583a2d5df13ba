// Shared by the serve tests: four LoRA adapters over the bundled stories260K (made once per
// process), greedy references computed by the library alone, and an in-process server on a free
// loopback port.
#pragma once
#include <gtest/gtest.h>
#include <httplib.h>
#include <torch/torch.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "peft/model.h"
#include "peft/tokenizer.h"
#include "peft/tuner.h"
#include "serve/engine.h"
#include "serve/server.h"
#include "test_util.h"

namespace peft::test {

inline std::string stories_dir() { return source_path("assets/stories260K"); }

/// Four LoRA adapters (r 4, random A and B: init_lora_weights false, seeds 100..103) on
/// stories260K's q/v projections, saved in peft's format.
inline const std::vector<std::string>& story_adapters() {
  static const std::vector<std::string> dirs = [] {
    std::vector<std::string> out;
    auto root = temp_dir("serve_adapters");
    for (int i = 0; i < 4; ++i) {
      torch::manual_seed(100 + i);
      auto pm = std::make_shared<PeftModel>(load_model(stories_dir()));
      pm->add_adapter("default", method_config("lora", {{"r", 4}, {"lora_alpha", 8}, {"init_lora_weights", false}}));
      out.push_back(root + "/a" + std::to_string(i));
      pm->save_adapter(out.back());
    }
    return out;
  }();
  return dirs;
}

inline std::shared_ptr<const Tokenizer> story_tokenizer() {
  static std::shared_ptr<const Tokenizer> t = load_tokenizer(stories_dir());
  return t;
}

/// The library's greedy continuation (as `peft generate --temperature 0`): prefill, then one
/// token at a time with the KV cache, stopping at EOS or after n tokens. adapter_dir empty: base.
inline std::string library_greedy_ids(const std::string& adapter_dir, const std::vector<int64_t>& ids, int64_t n,
                                      int64_t* tokens = nullptr) {
  torch::NoGradGuard ng;
  auto base = load_model(stories_dir());
  auto pm = std::make_shared<PeftModel>(base);
  if (!adapter_dir.empty()) pm->load_adapter(adapter_dir, "x");
  pm->eval();
  auto& tok = *story_tokenizer();
  StreamDecoder dec(tok, ids);
  KVCache cache;
  std::string text;
  auto input = torch::tensor(ids, torch::kLong).unsqueeze(0);
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    ModelInput mi;
    mi.input_ids = input;
    mi.cache = &cache;
    int64_t next = pm->forward(mi).logits[0][-1].argmax().item<int64_t>();
    ++count;
    if (next == tok.eos_id) break;
    text += dec.push(next);
    input = torch::tensor({next}, torch::kLong).unsqueeze(0);
  }
  if (tokens) *tokens = count;
  return text;
}
inline std::string library_greedy(const std::string& adapter_dir, const std::string& prompt, int64_t n,
                                  int64_t* tokens = nullptr) {
  return library_greedy_ids(adapter_dir, story_tokenizer()->encode(prompt, true), n, tokens);
}

/// Engine + HTTP server in this process, on a free loopback port; adapters "a0".."a3".
struct TestServer {
  std::unique_ptr<serve::Engine> engine;
  std::unique_ptr<serve::Server> server;
  std::thread thread;
  int port = 0;

  explicit TestServer(serve::EngineOptions eo = {"stories260K", 8, 64}, serve::ServerOptions so = {},
                      int adapters = 4) {
    std::vector<std::pair<std::string, std::string>> ads;
    for (int i = 0; i < adapters; ++i) ads.emplace_back("a" + std::to_string(i), story_adapters()[i]);
    engine = std::make_unique<serve::Engine>(load_model(stories_dir()), story_tokenizer(), eo, ads);
    so.host = "127.0.0.1";
    so.port = 0;
    server = std::make_unique<serve::Server>(*engine, so);
    port = server->bind();
    thread = std::thread([this] { server->run(); });
  }
  ~TestServer() {
    engine->shutdown(std::chrono::milliseconds(0));
    server->stop();
    thread.join();
  }
  std::unique_ptr<httplib::Client> client() const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
    c->set_read_timeout(120);
    c->set_write_timeout(30);
    return c;
  }
};

}  // namespace peft::test
