// Resource limits: a config that asks for absurd memory is refused before the allocation, with
// an error naming the file; the cap follows the files on disk and PEFT_MAX_LOAD_BYTES overrides it.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"

namespace fs = std::filesystem;
using peft::test::source_path;
using peft::test::temp_dir;

namespace {

struct EnvGuard {
  explicit EnvGuard(const char* v) {
    if (v) setenv("PEFT_MAX_LOAD_BYTES", v, 1);
    else unsetenv("PEFT_MAX_LOAD_BYTES");
  }
  ~EnvGuard() { unsetenv("PEFT_MAX_LOAD_BYTES"); }
};

std::string copy_model(const std::string& tag, const std::function<void(nlohmann::json&)>& edit) {
  std::string dir = temp_dir(tag);
  std::string src = source_path("tests/fixtures/hf/models/llama");
  fs::copy_file(src + "/model.safetensors", dir + "/model.safetensors");
  auto cfg = peft::read_json(src + "/config.json");
  edit(cfg);
  peft::write_json(dir + "/config.json", cfg);
  return dir;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const peft::Error& e) {
    return e.what();
  }
  return "";
}

long peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024;
}

}  // namespace

TEST(MemoryBudget, AbsurdVocabularyIsRefusedBeforeAllocating) {
  EnvGuard env(nullptr);
  // 5e6 x 64 float32 embeddings (and as many LM-head rows): 2.4 GiB for a 1 MiB checkpoint.
  auto dir = copy_model("budget_vocab", [](nlohmann::json& c) { c["vocab_size"] = 5000000; });
  long before = peak_rss_mib();
  auto t0 = std::chrono::steady_clock::now();
  std::string err = error_of([&] { peft::load_model(dir); });
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(err.find(dir + "/config.json"), std::string::npos) << err;
  EXPECT_NE(err.find("PEFT_MAX_LOAD_BYTES"), std::string::npos) << err;
  EXPECT_NE(err.find("refused before allocating"), std::string::npos) << err;
  EXPECT_LT(peak_rss_mib() - before, 1200) << "the refusal came after the memory was taken";
  EXPECT_LT(secs, 30);
}

TEST(MemoryBudget, EnvironmentOverridesTheCap) {
  auto dir = copy_model("budget_env", [](nlohmann::json&) {});
  {
    EnvGuard env("1000");  // smaller than the fixture: refused
    EXPECT_NE(error_of([&] { peft::load_model(dir); }).find("needs more than 0 MiB"), std::string::npos);
  }
  {
    EnvGuard env("off");
    EXPECT_EQ(error_of([&] { peft::load_model(dir); }), "");
  }
  {
    EnvGuard env("12x");
    EXPECT_NE(error_of([&] { peft::load_model(dir); }).find("PEFT_MAX_LOAD_BYTES: expected a byte count"),
              std::string::npos);
  }
  // The default cap loads the real model, and a guarded load leaves later allocations alone.
  EnvGuard env(nullptr);
  auto m = peft::load_model(dir);
  EXPECT_EQ(torch::zeros({1 << 20}).numel(), 1 << 20);
}

TEST(MemoryBudget, AbsurdAdapterRankIsRefused) {
  EnvGuard env(nullptr);
  std::string dir = temp_dir("budget_adapter");
  std::string src = source_path("tests/fixtures/peft/adapters/llama/lora");
  fs::copy_file(src + "/adapter_model.safetensors", dir + "/adapter_model.safetensors");
  auto cfg = peft::read_json(src + "/adapter_config.json");
  cfg["r"] = 1 << 24;  // 2^24 x 64 floats per lora_A: 4 GiB a layer
  peft::write_json(dir + "/adapter_config.json", cfg);
  auto pm = std::make_shared<peft::PeftModel>(peft::load_model(source_path("tests/fixtures/hf/models/llama")));
  std::string err = error_of([&] { pm->load_adapter(dir); });
  EXPECT_NE(err.find(dir + "/adapter_config.json"), std::string::npos) << err;
  EXPECT_NE(err.find("refused before allocating"), std::string::npos) << err;
}
