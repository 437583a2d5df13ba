// `peft inspect`: parameter counts and tensor tables against sums computed here from the files.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "cli/inspect.h"
#include "peft/io.h"
#include "peft/model.h"
#include "test_util.h"

using namespace peft;
namespace fs = std::filesystem;

namespace {
// In-process (one CLI start costs seconds on a loaded machine); the CLI itself is run below.
nlohmann::json inspect_json(const std::string& path) { return nlohmann::json::parse(cli::inspect(path).dump()); }

int64_t numel_sum(const TensorMap& w) {
  int64_t n = 0;
  for (auto& [k, v] : w) n += v.numel();
  return n;
}

void expect_tensors(const nlohmann::json& r, const TensorMap& w) {
  ASSERT_EQ(r["tensors"].size(), w.size());
  for (auto& t : r["tensors"]) {
    auto it = w.find(t["name"].get<std::string>());
    ASSERT_NE(it, w.end()) << t.dump();
    EXPECT_EQ(t["dtype"].get<std::string>(), dtype_to_safetensors(it->second.scalar_type()));
    EXPECT_EQ(t["shape"].get<std::vector<int64_t>>(), it->second.sizes().vec());
  }
}
}  // namespace

TEST(InspectCli, ModelFolders) {
  for (const char* m : {"gpt2", "llama", "bert_cls", "t5"}) {
    std::string dir = test::source_path(std::string("tests/fixtures/hf/models/") + m);
    auto r = inspect_json(dir);
    auto w = load_safetensors(dir + "/model.safetensors");
    auto cfg = read_json(dir + "/config.json");
    EXPECT_EQ(r["kind"], "model");
    EXPECT_EQ(r["model_type"], cfg["model_type"]) << m;
    EXPECT_EQ(r["architecture"], cfg["architectures"][0]) << m;
    EXPECT_EQ(r["num_parameters"].get<int64_t>(), numel_sum(w)) << m;
    expect_tensors(r, w);
  }
  auto r = inspect_json(test::source_path("tests/fixtures/hf/models/gpt2"));
  EXPECT_EQ(r["config"]["n_embd"], 64);
  EXPECT_EQ(r["config"]["activation_function"], "gelu_new");
}

TEST(InspectCli, Llama2cCheckpoint) {
  std::string src = test::source_path("assets/stories260K");
  auto r = inspect_json(src);
  EXPECT_EQ(r["model_type"], "llama");
  EXPECT_EQ(r["format"], "llama2.c");
  int64_t n = 0;
  for (auto& p : load_model(src)->parameters()) n += p.numel();  // tied head: counted once
  EXPECT_EQ(r["num_parameters"].get<int64_t>(), n);
  EXPECT_EQ(r["config"]["hidden_size"], 64);
}

TEST(InspectCli, AdapterFolders) {
  int checked = 0;
  for (const char* base : {"tests/fixtures/peft/adapters/llama", "tests/fixtures/peft/adapters/bert_cls"}) {
    for (auto& e : fs::directory_iterator(test::source_path(base))) {
      std::string dir = e.path().string();
      auto r = inspect_json(dir);
      auto w = load_safetensors(dir + "/adapter_model.safetensors");
      auto cfg = read_json(dir + "/adapter_config.json");
      EXPECT_EQ(r["kind"], "adapter") << dir;
      EXPECT_EQ(r["peft_type"], cfg["peft_type"]) << dir;
      EXPECT_EQ(r["num_parameters"].get<int64_t>(), numel_sum(w)) << dir;
      expect_tensors(r, w);
      for (const char* k : {"r", "lora_alpha", "target_modules", "num_virtual_tokens"})
        if (cfg.contains(k) && !cfg[k].is_null()) EXPECT_EQ(r["config"][k], cfg[k]) << dir << " " << k;
      ++checked;
    }
  }
  EXPECT_GE(checked, 22);
}

TEST(InspectCli, TextOutputAndSingleFile) {
  std::string out;
  std::string dir = test::source_path("tests/fixtures/peft/adapters/llama/lora");
  ASSERT_EQ(test::run_cli("inspect " + dir, &out), 0) << out;
  EXPECT_NE(out.find("peft_type"), std::string::npos) << out;
  EXPECT_NE(out.find("LORA"), std::string::npos) << out;
  EXPECT_NE(out.find("q_proj"), std::string::npos) << out;
  auto w = load_safetensors(dir + "/adapter_model.safetensors");
  EXPECT_NE(out.find("parameters: " + std::to_string(numel_sum(w))), std::string::npos) << out;
  ASSERT_EQ(test::run_cli("inspect " + dir + "/adapter_model.safetensors --json", &out), 0) << out;
  auto r = nlohmann::json::parse(out.substr(out.find('{')));
  EXPECT_EQ(r["kind"], "safetensors");
  EXPECT_EQ(r["metadata"]["format"], "pt");
  EXPECT_EQ(r["num_parameters"].get<int64_t>(), numel_sum(w));
  // `--json` before the path works too.
  ASSERT_EQ(test::run_cli("inspect --json " + dir, &out), 0) << out;
  EXPECT_NE(out.find("\"peft_type\": \"LORA\""), std::string::npos) << out;
}

TEST(InspectCli, ErrorsNameTheFile) {
  std::string out;
  auto dir = test::temp_dir("inspect_bad");
  write_file_atomic(dir + "/adapter_config.json", "[1, 2]");
  EXPECT_NE(test::run_cli("inspect " + dir, &out), 0);
  EXPECT_NE(out.find(dir + "/adapter_config.json"), std::string::npos) << out;
  write_file_atomic(dir + "/adapter_config.json", "{\"peft_type\": \"LORA\"");
  EXPECT_NE(test::run_cli("inspect " + dir, &out), 0);
  EXPECT_NE(out.find("adapter_config.json"), std::string::npos) << out;
  write_file_atomic(dir + "/adapter_config.json", "{\"peft_type\": \"LORA\"}");
  EXPECT_NE(test::run_cli("inspect " + dir, &out), 0);
  EXPECT_NE(out.find("adapter_model.safetensors"), std::string::npos) << out;
  write_file_atomic(dir + "/adapter_model.safetensors", "garbage");
  EXPECT_NE(test::run_cli("inspect " + dir, &out), 0);
  EXPECT_NE(out.find(dir + "/adapter_model.safetensors"), std::string::npos) << out;
  EXPECT_NE(test::run_cli("inspect /nonexistent/x", &out), 0);
  EXPECT_NE(out.find("/nonexistent/x"), std::string::npos) << out;
}
