// The tuner core and the reparameterized family against Python peft's fixtures and invariants:
// fixture logits (loaded adapters and merged), saved key names/config fields, bit-exact round
// trips, identity at init, closed-form parameter counts, merge/unmerge, finite differences,
// a frozen base after a training step, and 5 AdamW steps against peft's trajectory.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using peft::test::source_path;
using peft::test::temp_dir;

namespace {

const std::string kLlama = "llama";  // tests/fixtures/hf/models/llama

using peft::test::fixture_input;
using peft::test::logits_of;
using peft::test::max_diff;

PeftModelPtr peft_llama() { return peft::test::fixture_peft_model(kLlama); }

/// Gives every trainable tensor random values so adapters change the output (peft's fixtures do
/// the same) and gradients reach every parameter.
void randomize(PeftModel& pm, double scale = 0.1) {
  torch::NoGradGuard ng;
  for (auto& t : pm.trainable_parameters()) t.copy_(torch::randn_like(t) * scale + (t.abs().sum().item<double>() > 0 && t.min().item<double>() > 0.5 ? 1.0 : 0.0));
}

}  // namespace

class PeftFixture : public ::testing::TestWithParam<std::string> {};

// Loads each adapter Python peft saved and reproduces its logits, loss and merged logits.
TEST_P(PeftFixture, LoadsAdapterAndMatchesLogits) {
  const std::string method = GetParam();
  const std::string dir = source_path("tests/fixtures/peft/adapters/llama/" + method);
  auto pm = peft_llama();
  auto base_weights = pm->model->state_dict();
  for (auto& kv : base_weights) kv.second = kv.second.clone();
  pm->load_adapter(dir);
  peft::test::expect_matches_peft_fixture(*pm, base_weights, dir, fixture_input(kLlama), "fixture_save");
}

INSTANTIATE_TEST_SUITE_P(Llama, PeftFixture,
                         ::testing::Values("lora", "rslora", "dora", "ia3", "loha", "lokr", "lokr_decomposed", "adalora"));

TEST(AdaLora, OrthogonalityTermMatchesPeft) {
  const std::string dir = source_path("tests/fixtures/peft/adapters/llama/adalora");
  auto ref = load_safetensors(dir + "/reference.safetensors");
  auto pm = peft_llama();
  pm->load_adapter(dir);
  pm->train();
  torch::NoGradGuard ng;
  auto reg = pm->extra_loss();
  ASSERT_TRUE(reg.defined());
  // orth_reg_term is peft's weighted term (orth_reg_weight 0.5 × mean of the norms).
  EXPECT_NEAR(reg.item<double>(), ref.at("orth_reg_term").item<double>(), 1e-5);
  auto out = pm->forward(fixture_input(kLlama));
  EXPECT_NEAR(out.loss.item<double>(), ref.at("loss").item<double>(), 1e-5);
}

// ---- properties of every method ------------------------------------------------------------

struct MethodCase {
  std::string method;
  nlohmann::json options;
  int64_t expected_trainable;  // closed form for the llama fixture (2 layers; q 64->64, v 64->32)
};

std::vector<MethodCase> method_cases() {
  // Per layer: q_proj in 64 out 64; v_proj in 64 out 32; k_proj out 32; down_proj in 128.
  return {
      {"lora", {{"r", 4}}, 2 * (4 * (64 + 64) + 4 * (64 + 32))},                      // r(in+out)
      {"rslora", {{"r", 4}}, 2 * (4 * (64 + 64) + 4 * (64 + 32))},
      {"dora", {{"r", 4}}, 2 * (4 * (64 + 64) + 64 + 4 * (64 + 32) + 32)},            // + magnitude [out]
      {"pissa", {{"r", 4}}, 2 * (4 * (64 + 64) + 4 * (64 + 32))},
      {"olora", {{"r", 4}}, 2 * (4 * (64 + 64) + 4 * (64 + 32))},
      {"lora-fa", {{"r", 4}}, 2 * (4 * 64 + 4 * 32)},                                 // B only
      {"dylora", {{"r", 4}}, 2 * (4 * (64 + 64) + 4 * (64 + 32))},
      {"delta-lora", {{"r", 4}}, 2 * (4 * (64 + 64) + 4 * (64 + 32))},
      {"vera", {{"r", 4}}, 2 * ((64 + 4) + (32 + 4))},                                // b [out] + d [r]
      {"loha", {{"r", 4}, {"alpha", 4}}, 2 * (2 * 4 * (64 + 64) + 2 * 4 * (64 + 32))},  // 2r(in+out)
      {"lokr", {{"r", 4}, {"alpha", 4}}, 2 * ((8 * 8 + 8 * 8) + (4 * 8 + 8 * 8))},    // kron factors
      {"adalora", {{"init_r", 4}, {"target_r", 2}, {"total_step", 10}}, 2 * (4 * (64 + 64) + 4 + 4 * (64 + 32) + 4)},
      {"ia3", {}, 2 * (32 + 32 + 128)},                                                // k, v out; down in
  };
}

void PrintTo(const MethodCase& c, std::ostream* os) { *os << c.method; }

class Method : public ::testing::TestWithParam<MethodCase> {};

TEST_P(Method, IdentityAtInitAndTrainableCount) {
  auto c = GetParam();
  auto pm = peft_llama();
  auto in = fixture_input(kLlama);
  auto base = logits_of(*pm, in);
  pm->add_adapter("default", method_config(c.method, c.options));
  auto rep = pm->trainable_report();
  EXPECT_EQ(rep.trainable, c.expected_trainable) << rep.to_string();
  int64_t n = 0;
  for (auto& t : pm->trainable_parameters()) n += t.numel();
  EXPECT_EQ(n, c.expected_trainable);
  EXPECT_LT(max_diff(logits_of(*pm, in), base), 1e-4) << c.method;
}

TEST_P(Method, MergeUnmergeSaveLoad) {
  auto c = GetParam();
  auto pm = peft_llama();
  auto in = fixture_input(kLlama);
  pm->add_adapter("default", method_config(c.method, c.options));
  randomize(*pm);
  auto before = pm->model->state_dict();
  for (auto& kv : before) kv.second = kv.second.clone();
  auto out = logits_of(*pm, in);
  pm->merge();
  EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-5) << c.method;
  pm->unmerge();
  for (auto& kv : pm->model->state_dict())
    if (before.count(kv.first)) EXPECT_LT(max_diff(kv.second, before.at(kv.first)), 1e-6) << kv.first;

  // save -> load into a fresh model: same tensors bit for bit, same output.
  auto dir = temp_dir("roundtrip_" + c.method);
  pm->save_adapter(dir);
  auto pm2 = peft_llama();
  pm2->load_adapter(dir);
  auto saved = load_safetensors(dir + "/adapter_model.safetensors");
  auto again = pm2->adapter_state_dict("default");
  ASSERT_EQ(saved.size(), again.size());
  bool residual = c.method == "pissa" || c.method == "olora" || c.method == "delta-lora";
  if (!residual) {
    auto orig = pm->adapter_state_dict("default");
    for (auto& kv : orig) EXPECT_TRUE(torch::equal(kv.second, again.at(kv.first))) << kv.first;
    EXPECT_TRUE(torch::equal(logits_of(*pm2, in), out)) << c.method;
  } else {  // saved as the equivalent LoRA on the unmodified base
    EXPECT_LT(max_diff(logits_of(*pm2, in), out), 1e-5) << c.method;
  }
}

// Gradients of every trainable tensor agree with central finite differences (float64).
TEST_P(Method, GradientsMatchFiniteDifferences) {
  auto c = GetParam();
  auto m = load_model(source_path("tests/fixtures/hf/models/" + kLlama), LoadOptions{std::nullopt, 0, torch::kFloat64});
  m->eval();
  auto pm = std::make_shared<PeftModel>(m);
  auto opts = c.options;
  pm->add_adapter("default", method_config(c.method, opts));
  pm->to(torch::kFloat64);
  randomize(*pm, 0.3);
  auto in = fixture_input(kLlama);
  // DoRA detaches ||W + BA|| by design (Liu et al. 2024, sec. 4.3), so only the magnitude's
  // gradient is the full derivative; A's and B's are not meant to match finite differences.
  peft::test::expect_gradients_match_finite_differences(*pm, in, c.method, 1, [&](const std::string& name) {
    return c.method == "dora" && name.find("lora_magnitude_vector") == std::string::npos;
  });
}

INSTANTIATE_TEST_SUITE_P(All, Method, ::testing::ValuesIn(method_cases()),
                         [](const auto& info) {
                           std::string n = info.param.method;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// ---- lifecycle -----------------------------------------------------------------------------

TEST(PeftModelLifecycle, SeveralAdaptersScalesAndDisable) {
  auto pm = peft_llama();
  auto in = fixture_input(kLlama);
  in.labels = torch::Tensor();
  auto base = logits_of(*pm, in);
  pm->add_adapter("a", method_config("lora", {{"r", 4}, {"init_lora_weights", false}}));
  pm->add_adapter("b", method_config("ia3", {{"init_ia3_weights", false}}));
  pm->set_adapter("a");
  auto la = logits_of(*pm, in);
  pm->set_adapter("b");
  auto lb = logits_of(*pm, in);
  EXPECT_GT(max_diff(la, base), 1e-3);
  EXPECT_GT(max_diff(lb, base), 1e-3);
  EXPECT_GT(max_diff(la, lb), 1e-3);
  pm->disable_adapters();
  EXPECT_TRUE(torch::equal(logits_of(*pm, in), base));
  pm->disable_adapters(false);
  pm->set_adapter("a");
  pm->set_scale("a", 0.0);
  EXPECT_LT(max_diff(logits_of(*pm, in), base), 1e-6);
  pm->set_scale("a", 1.0);
  EXPECT_TRUE(torch::equal(logits_of(*pm, in), la));
  // Only the active adapter trains.
  for (auto& [name, t] : pm->named_trainable_parameters()) EXPECT_NE(name.find(".a."), std::string::npos) << name;
}

TEST(PeftModelLifecycle, MergeAndUnloadWritesLoadableCheckpoint) {
  auto pm = peft_llama();
  auto in = fixture_input(kLlama);
  pm->add_adapter("default", method_config("lora", {{"r", 4}, {"init_lora_weights", false}}));
  auto out = logits_of(*pm, in);
  auto merged = pm->merge_and_unload();
  auto dir = temp_dir("merged");
  merged->save_pretrained(dir);
  auto sd = load_safetensors(dir + "/model.safetensors");
  for (auto& kv : sd) EXPECT_EQ(kv.first.find("lora"), std::string::npos) << kv.first;
  auto re = load_model(dir);
  re->eval();
  torch::NoGradGuard ng;
  EXPECT_LT(max_diff(re->forward(in).logits, out), 1e-5);
}

TEST(PeftModelLifecycle, FrozenBaseHasNoGradAfterStep) {
  auto pm = peft_llama();
  pm->add_adapter("default", method_config("lora", {{"r", 4}}));
  pm->train();
  auto params = pm->trainable_parameters();
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-3));
  auto loss = pm->forward(fixture_input(kLlama)).loss;
  loss.backward();
  opt.step();
  for (auto& p : pm->model->named_parameters()) {
    bool adapter = p.key().find("lora_") != std::string::npos;
    EXPECT_EQ(p.value().requires_grad(), adapter) << p.key();
    if (!adapter) EXPECT_FALSE(p.value().grad().defined()) << p.key();
  }
  EXPECT_EQ(opt.state().size(), params.size());
}

// Five AdamW steps from peft's initial adapter reproduce peft's losses and final adapter.
TEST(PeftModelLifecycle, AdamWTrajectoryMatchesPeft) {
  const std::string dir = source_path("tests/fixtures/peft/training/llama_lora");
  auto traj = load_safetensors(dir + "/trajectory.safetensors");
  auto ref = load_safetensors(dir + "/reference.safetensors");
  auto pm = peft_llama();
  pm->load_adapter(dir + "/initial_adapter", "default", /*trainable=*/true);
  auto named = pm->named_trainable_parameters();
  ASSERT_EQ(named.size(), 8u);
  std::vector<torch::Tensor> params;
  for (auto& kv : named) params.push_back(kv.second);
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-3).betas({0.9, 0.999}).eps(1e-8).weight_decay(0.0));
  auto in = fixture_input(kLlama);
  for (int step = 0; step < 5; ++step) {
    opt.zero_grad();
    auto loss = pm->forward(in).loss;
    EXPECT_NEAR(loss.item<double>(), ref.at("losses")[step].item<double>(), 1e-4 * std::abs(loss.item<double>()));
    loss.backward();
    if (step == 0)
      for (auto& [name, p] : named) {
        std::string key = name;
        key.replace(key.find(".default"), 8, "");
        EXPECT_TRUE(torch::allclose(p.grad(), traj.at("step0.grad." + key), 1e-4, 1e-6)) << key;
      }
    opt.step();
  }
  auto fin = load_safetensors(dir + "/final_adapter/adapter_model.safetensors");
  auto ours = pm->adapter_state_dict("default");
  for (auto& kv : fin) EXPECT_TRUE(torch::allclose(ours.at(kv.first), kv.second, 0, 1e-4)) << kv.first;
}

TEST(PeftModelErrors, ClearMessages) {
  auto pm = peft_llama();
  try {
    pm->add_adapter("default", method_config("lora", {{"target_modules", {"nonexistent_proj"}}}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("matched no module"), std::string::npos) << e.what();
  }
  EXPECT_THROW(method_config("no-such-method"), Error);
  EXPECT_THROW(pm->add_adapter("x", {{"peft_type", "LORA"}, {"r", 0}}), Error);

  // A tensor of the wrong shape names the tensor.
  auto dir = temp_dir("badshape");
  std::filesystem::copy(source_path("tests/fixtures/peft/adapters/llama/lora/adapter_config.json"), dir + "/adapter_config.json");
  auto t = load_safetensors(source_path("tests/fixtures/peft/adapters/llama/lora/adapter_model.safetensors"));
  TensorMap bad;
  for (auto& kv : t) bad[kv.first] = kv.second.clone();
  const std::string key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
  bad[key] = torch::zeros({4, 63});
  save_safetensors(dir + "/adapter_model.safetensors", bad);
  auto pm2 = peft_llama();
  try {
    pm2->load_adapter(dir);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(key), std::string::npos) << e.what();
  }
  // Unknown config keys from newer peft versions are tolerated.
  auto cfg = read_json(dir + "/adapter_config.json");
  cfg["some_future_field"] = 3;
  write_json(dir + "/adapter_config.json", cfg);
  save_safetensors(dir + "/adapter_model.safetensors", t);
  auto pm3 = peft_llama();
  EXPECT_NO_THROW(pm3->load_adapter(dir));
}
