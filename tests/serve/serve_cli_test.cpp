// `peft serve` as a child process on a free port (--port 0): greedy and seeded sampled output
// through the server equal `peft generate` for the same prompt, adapter and settings; SIGTERM
// lets a running request finish and exits 0; encoder-decoders are refused.
#include <gtest/gtest.h>
#include <httplib.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "serve_util.h"

using json = nlohmann::json;
using namespace peft::test;

namespace {

struct Child {
  pid_t pid = -1;
  int fd = -1;  // its stdout + stderr
  int port = 0;
  std::string log;

  // Starts `peft serve ARGS --port 0` and waits for "listening on http://127.0.0.1:PORT".
  explicit Child(const std::string& args) {
    int p[2];
    if (pipe(p) != 0) return;
    pid = fork();
    if (pid == 0) {
      dup2(p[1], 1);
      dup2(p[1], 2);
      close(p[0]);
      std::string cmd = "exec " + cli_path() + " serve " + args + " --port 0";
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(p[1]);
    fd = p[0];
    const std::string key = "listening on http://127.0.0.1:";
    for (int waited = 0; waited < 120000 && port == 0;) {
      if (!read_some(100)) {
        waited += 100;
        if (exited()) break;
      }
      auto at = log.find(key);
      if (at != std::string::npos && log.find('\n', at) != std::string::npos) port = std::stoi(log.substr(at + key.size()));
    }
  }
  bool read_some(int ms) {
    pollfd pf{fd, POLLIN, 0};
    if (poll(&pf, 1, ms) <= 0) return false;
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) return false;
    log.append(buf, n);
    return true;
  }
  bool exited() {
    int st;
    return waitpid(pid, &st, WNOHANG) == pid ? (status = st, done = true) : done;
  }
  // Waits for the exit; returns the exit code (-1: killed by a signal or timed out).
  int wait_exit(int timeout_ms) {
    for (int t = 0; t < timeout_ms && !exited(); t += 20) {
      read_some(0);
      usleep(20000);
    }
    while (read_some(0)) {}
    if (!done) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  ~Child() {
    if (pid > 0 && !exited()) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (fd >= 0) close(fd);
  }
  int status = 0;
  bool done = false;
};

// The continuation `peft generate` prints after the prompt.
std::string generate_cli(const std::string& args, const std::string& prompt) {
  std::string out;
  int rc = run_cli("generate --model " + stories_dir() + " --prompt '" + prompt + "' " + args, &out);
  EXPECT_EQ(rc, 0) << out;
  auto at = out.rfind(prompt);
  EXPECT_NE(at, std::string::npos) << out;
  std::string text = at == std::string::npos ? "" : out.substr(at + prompt.size());
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

}  // namespace

TEST(ServeCli, OutputThroughTheServerEqualsPeftGenerate) {
  const auto& ads = story_adapters();
  Child c("--model " + stories_dir() + " --adapter a=" + ads[0] + " --adapter b=" + ads[1]);
  ASSERT_GT(c.port, 0) << c.log;
  httplib::Client cl("127.0.0.1", c.port);
  cl.set_read_timeout(120);
  const std::string prompt = "Once upon a time";
  struct Case {
    std::string model, adapter_arg;
    json sampling;
    std::string cli;
  } cases[] = {
      {"stories260K", "", {{"temperature", 0}}, "--temperature 0"},
      {"a", " --adapter " + ads[0], {{"temperature", 0}}, "--temperature 0"},
      {"b", " --adapter " + ads[1], {{"temperature", 0}}, "--temperature 0"},
      {"b", " --adapter " + ads[1], {{"temperature", 0.9}, {"top_k", 30}, {"seed", 11}},
       "--temperature 0.9 --top_k 30 --seed 11"},
      {"stories260K", "", {{"temperature", 1.0}, {"top_p", 0.8}, {"seed", 5}}, "--temperature 1.0 --top_p 0.8 --seed 5"},
  };
  for (auto& k : cases) {
    json body = {{"model", k.model}, {"prompt", prompt}, {"max_tokens", 30}};
    for (auto& [f, v] : k.sampling.items()) body[f] = v;
    auto r = cl.Post("/v1/completions", body.dump(), "application/json");
    ASSERT_TRUE(r) << c.log;
    ASSERT_EQ(r->status, 200) << r->body;
    EXPECT_EQ(json::parse(r->body)["choices"][0]["text"].get<std::string>(),
              generate_cli("--max-new-tokens 30 " + k.cli + k.adapter_arg, prompt))
        << k.model << " " << k.cli;
  }
}

TEST(ServeCli, SigtermLetsRunningRequestsFinishAndExitsZero) {
  Child c("--model " + stories_dir() + " --adapter a=" + story_adapters()[0]);
  ASSERT_GT(c.port, 0) << c.log;
  std::string body;
  int status = 0;
  std::atomic<bool> started{false};
  std::thread t([&] {
    httplib::Client cl("127.0.0.1", c.port);
    cl.set_read_timeout(120);
    json b = {{"model", "a"}, {"prompt", "Once upon a time"}, {"max_tokens", 300}, {"temperature", 0}, {"stream", true}};
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = b.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
      body.append(d, n);
      started = true;
      return true;
    };
    auto r = cl.send(req);
    if (r) status = r->status;
  });
  while (!started) usleep(5000);
  kill(c.pid, SIGTERM);
  t.join();
  EXPECT_EQ(c.wait_exit(60000), 0) << c.log;
  EXPECT_EQ(status, 200);
  // The request ran to its end: a finish chunk with finish_reason and [DONE].
  EXPECT_NE(body.find("\"finish_reason\":\"length\""), std::string::npos) << body.substr(body.size() > 300 ? body.size() - 300 : 0);
  EXPECT_NE(body.find("data: [DONE]"), std::string::npos);
  EXPECT_NE(c.log.find("draining"), std::string::npos) << c.log;
}

TEST(ServeCli, RefusesEncoderDecodersAndBadAdapterSpecs) {
  std::string out;
  EXPECT_NE(run_cli("serve --model " + source_path("tests/fixtures/hf/models/t5") + " --port 0", &out), 0);
  EXPECT_NE(out.find("encoder-decoder"), std::string::npos) << out;
  EXPECT_NE(run_cli("serve --model " + stories_dir() + " --adapter nodir --port 0", &out), 0);
  EXPECT_NE(out.find("NAME=DIR"), std::string::npos) << out;
}
