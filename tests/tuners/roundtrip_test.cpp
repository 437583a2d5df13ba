// Round trip in both directions for every adapter fixture Python peft 0.13.2 wrote whose method
// peft.cpp shares (tests/fixtures/peft/adapters/*/* and tests/fixtures/wave2/adapters/*/*):
// peft's folder loads to peft's logits; the folder we save from it has exactly peft's tensor
// keys and shapes and config fields (values equal; target lists as sets); reloading ours gives
// the same logits.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"
#include "tuners/wave2_util.h"

using namespace peft;
using namespace peft::test;

namespace {

struct Fixture {
  std::string set, base, adapter;  // set: "peft" (wave 1) or "wave2"
  std::string dir() const {
    return set == "peft" ? source_path("tests/fixtures/peft/adapters/" + base + "/" + adapter)
                         : wave2_path("adapters/" + base + "/" + adapter);
  }
  std::string model_dir() const {
    return set == "peft" ? source_path("tests/fixtures/hf/models/" + base) : wave2_path("models/" + base);
  }
  ModelInput input() const { return set == "peft" ? fixture_input(base) : wave2_input(base); }
};
void PrintTo(const Fixture& f, std::ostream* os) { *os << f.set << "/" << f.base << "/" << f.adapter; }

std::vector<Fixture> all_fixtures() {
  std::vector<Fixture> out;
  for (std::string set : {"peft", "wave2"}) {
    auto root = set == "peft" ? source_path("tests/fixtures/peft/adapters") : wave2_path("adapters");
    std::vector<std::filesystem::path> dirs;
    for (auto& b : std::filesystem::directory_iterator(root))
      for (auto& a : std::filesystem::directory_iterator(b.path())) dirs.push_back(a.path());
    std::sort(dirs.begin(), dirs.end());
    for (auto& d : dirs) out.push_back({set, d.parent_path().filename().string(), d.filename().string()});
  }
  return out;
}

/// Fixtures whose base model the model side of issue 13 enables (src/models): skipped here,
/// the reason named, until this branch handles them (qwen2: as soon as its base loads).
std::string skip_reason(const Fixture& f) {
  if (f.base == "qwen2") {
    try {
      load_model(f.model_dir());
    } catch (const Error& e) {
      return std::string("Qwen2 base (q/k/v biases without o_proj.bias) is the model side's: ") + e.what();
    }
  }
  return "";
}

/// Deliberate differences from peft's folder (docs/CONFIG_AUDIT_ADAPTERS.md): keys we add.
bool deliberate_extra_key(const Fixture& f, const std::string& key) {
  // LoRA bias = "lora_only": we save the trained biases of the wrapped layers.
  return f.adapter == "lora_bias_lora_only" && key.find(".base_layer.bias") != std::string::npos;
}

torch::Tensor logits(PeftModel& pm, const ModelInput& in) {
  torch::NoGradGuard ng;
  return pm.forward(in).logits;
}

PeftModelPtr base_of(const Fixture& f) {
  auto m = load_model(f.model_dir());
  m->eval();
  return std::make_shared<PeftModel>(m);
}

}  // namespace

class RoundTrip : public ::testing::TestWithParam<Fixture> {};

TEST_P(RoundTrip, PeftFolderLoadsSavesAndReloads) {
  const Fixture f = GetParam();
  if (auto why = skip_reason(f); !why.empty()) GTEST_SKIP() << why;
  const std::string dir = f.dir();
  auto ref = load_safetensors(dir + "/reference.safetensors");
  auto in = f.input();

  auto pm = base_of(f);
  pm->load_adapter(dir);
  auto ours = logits(*pm, in);
  expect_logits_close(ours, ref.at("logits"), "peft's folder");

  auto tmp = temp_dir("roundtrip_" + f.base + "_" + f.adapter);
  pm->save_adapter(tmp);
  auto theirs_keys = tensor_shapes(dir + "/adapter_model.safetensors");
  auto our_keys = tensor_shapes(tmp + "/adapter_model.safetensors");
  for (auto& kv : theirs_keys) {
    ASSERT_TRUE(our_keys.count(kv.first)) << "missing " << kv.first;
    EXPECT_EQ(our_keys.at(kv.first), kv.second) << kv.first;
  }
  for (auto& kv : our_keys)
    if (!theirs_keys.count(kv.first)) EXPECT_TRUE(deliberate_extra_key(f, kv.first)) << "extra " << kv.first;
  auto theirs_cfg = read_json(dir + "/adapter_config.json"), our_cfg = read_json(tmp + "/adapter_config.json");
  expect_same_config(theirs_cfg, our_cfg, "adapter_config.json");
  if (theirs_cfg.contains("target_modules") && theirs_cfg["target_modules"].is_array())
    EXPECT_EQ(name_set(theirs_cfg["target_modules"]), name_set(our_cfg["target_modules"]));

  auto again = base_of(f);
  again->load_adapter(tmp);
  EXPECT_TRUE(torch::equal(logits(*again, in), ours)) << max_diff(logits(*again, in), ours);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, RoundTrip, ::testing::ValuesIn(all_fixtures()), [](const auto& info) {
  std::string n = info.param.set + "_" + info.param.base + "_" + info.param.adapter;
  for (auto& ch : n)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
});
