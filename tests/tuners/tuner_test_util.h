// Helpers for the per-method property tests (tests/tuners/*_test.cpp): the fixture models and
// inputs, outputs without autograd, random adapter weights, and the float64 finite-difference
// check of every trainable tensor's gradient.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"

namespace peft::test {

/// inputs.safetensors of a fixture model (tests/fixtures/hf/models/<model>).
inline ModelInput fixture_input(const std::string& model) {
  auto in = load_safetensors(source_path("tests/fixtures/hf/models/" + model + "/inputs.safetensors"));
  ModelInput mi;
  mi.input_ids = in.at("input_ids").clone();
  mi.attention_mask = in.at("attention_mask").clone();
  if (in.count("token_type_ids")) mi.token_type_ids = in.at("token_type_ids").clone();
  if (in.count("decoder_input_ids")) mi.decoder_input_ids = in.at("decoder_input_ids").clone();
  if (in.count("labels")) mi.labels = in.at("labels").clone();
  return mi;
}

/// A fixture model in eval mode, wrapped without adapters.
inline PeftModelPtr fixture_peft_model(const std::string& model, torch::Dtype dt = torch::kFloat32) {
  auto m = load_model(source_path("tests/fixtures/hf/models/" + model), LoadOptions{std::nullopt, 0, dt});
  m->eval();
  return std::make_shared<PeftModel>(m);
}

inline double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

inline torch::Tensor logits_of(PeftModel& pm, const ModelInput& in) {
  torch::NoGradGuard ng;
  return pm.forward(in).logits;
}

/// Every trainable tensor set to N(0, scale^2) (so no adapter is the identity any more).
inline void randomize(PeftModel& pm, double scale) {
  torch::NoGradGuard ng;
  for (auto& t : pm.trainable_parameters()) t.copy_(torch::randn_like(t) * scale);
}

/// Every trainable tensor moved by N(0, scale^2) noise (IA3's ones stay near one, masks keep
/// their meaning).
inline void perturb(PeftModel& pm, double scale) {
  torch::NoGradGuard ng;
  for (auto& t : pm.trainable_parameters()) t.add_(torch::randn_like(t) * scale);
}

/// The modules adapter "default" wraps, in any order.
inline void expect_targeted(const PeftModel& pm, std::vector<std::string> want) {
  auto got = pm.adapter("default").targeted;
  std::sort(got.begin(), got.end());
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
}

/// A freshly added adapter leaves the base logits `base` bit for bit; random adapter weights
/// change them; a non-mergeable method refuses merge(); disabling gives the base back.
inline void expect_identity_at_init(PeftModel& pm, const ModelInput& in, const torch::Tensor& base, bool mergeable) {
  EXPECT_TRUE(torch::equal(logits_of(pm, in), base)) << max_diff(logits_of(pm, in), base);
  randomize(pm, 0.3);
  EXPECT_GT(max_diff(logits_of(pm, in), base), 1e-4);
  if (!mergeable) EXPECT_THROW(pm.merge(), Error);
  pm.disable_adapters();
  EXPECT_TRUE(torch::equal(logits_of(pm, in), base));
  pm.disable_adapters(false);
}

/// Autograd against central differences (h = 1e-6) at the first and last element of every
/// `every`-th trainable tensor (1: all); the model should be float64.
/// `skip` rejects tensors by name (their gradient is still required to exist).
inline void expect_gradients_match_finite_differences(PeftModel& pm, const ModelInput& in, const std::string& label,
                                                      int every = 1,
                                                      const std::function<bool(const std::string&)>& skip = nullptr) {
  auto named = pm.named_trainable_parameters();
  ASSERT_FALSE(named.empty());
  pm.forward(in).loss.backward();
  torch::NoGradGuard ng;
  int seen = 0;
  for (auto& [name, p] : named) {
    if (seen++ % every) continue;
    ASSERT_TRUE(p.grad().defined()) << name;
    if (skip && skip(name)) continue;
    auto flat = p.view({-1});
    auto g = p.grad().view({-1});
    // The ends, and the entry with the largest gradient (inside a sparse method's mask).
    for (int64_t idx : {int64_t(0), flat.numel() - 1, g.abs().argmax().item<int64_t>()}) {
      const double h = 1e-6, orig = flat[idx].item<double>();
      flat[idx].fill_(orig + h);
      double lp = pm.forward(in).loss.item<double>();
      flat[idx].fill_(orig - h);
      double lm = pm.forward(in).loss.item<double>();
      flat[idx].fill_(orig);
      double fd = (lp - lm) / (2 * h);
      EXPECT_NEAR(g[idx].item<double>(), fd, 1e-6 + 1e-4 * std::abs(fd)) << label << " " << name << "[" << idx << "]";
    }
  }
}

/// The adapter tensors of `a` and `b` are the same, key for key, bit for bit.
inline void expect_same_adapter(const PeftModel& a, const PeftModel& b, const std::string& name = "default") {
  auto sa = a.adapter_state_dict(name), sb = b.adapter_state_dict(name);
  ASSERT_EQ(sa.size(), sb.size());
  for (auto& kv : sa) {
    ASSERT_TRUE(sb.count(kv.first)) << kv.first;
    EXPECT_TRUE(torch::equal(kv.second, sb.at(kv.first))) << kv.first;
  }
}

/// Saves adapter "default" to a fresh folder, loads it into a fresh fixture model, and expects
/// identical tensors and outputs. Returns the folder.
inline std::string expect_save_load_bit_exact(PeftModel& pm, const std::string& model, const ModelInput& in,
                                              const std::string& tag) {
  auto out = logits_of(pm, in);
  auto dir = temp_dir(tag);
  pm.save_adapter(dir);
  auto pm2 = fixture_peft_model(model);
  pm2->load_adapter(dir);
  auto orig = pm.adapter_state_dict("default"), again = pm2->adapter_state_dict("default");
  EXPECT_EQ(orig.size(), again.size());
  for (auto& kv : orig) {
    EXPECT_TRUE(again.count(kv.first)) << kv.first;
    if (again.count(kv.first)) EXPECT_TRUE(torch::equal(kv.second, again.at(kv.first))) << kv.first;
  }
  EXPECT_TRUE(torch::equal(logits_of(*pm2, in), out));
  return dir;
}

/// The text of the peft::Error `f` throws, or "no error".
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

/// The adapter_model.safetensors of folders `theirs` and `ours` hold the same keys and the same
/// tensors, bit for bit.
inline void expect_same_saved_tensors(const std::string& theirs_dir, const std::string& ours_dir) {
  auto theirs = load_safetensors(theirs_dir + "/adapter_model.safetensors");
  auto ours = load_safetensors(ours_dir + "/adapter_model.safetensors");
  std::vector<std::string> k1, k2;
  for (auto& kv : theirs) k1.push_back(kv.first);
  for (auto& kv : ours) k2.push_back(kv.first);
  EXPECT_EQ(k1, k2);
  for (auto& kv : theirs)
    if (ours.count(kv.first)) EXPECT_TRUE(torch::equal(kv.second, ours.at(kv.first))) << kv.first;
}

/// Every base weight of pm's model (state-dict keys without the wrappers' ".base_layer") is
/// within 1e-6 of `base`, e.g. after merge() + unmerge().
inline void expect_base_weights_restored(const PeftModel& pm, const TensorMap& base) {
  for (auto& kv : pm.model->state_dict()) {
    std::string k = kv.first;
    auto pos = k.find(".base_layer");
    if (pos != std::string::npos) k.erase(pos, 11);
    if (!base.count(k)) continue;
    EXPECT_LT(max_diff(kv.second, base.at(k)), 1e-6) << k;
  }
}

/// A Python-peft adapter folder `dir` (with peft's reference.safetensors) loaded into `pm`, whose
/// base weights were `base` before loading: our logits and loss match peft's, the merged logits
/// and loss too, unmerge() restores every base weight and the logits, and saving the adapter
/// again writes peft's keys, tensors and config fields. Returns the folder we saved to.
inline std::string expect_matches_peft_fixture(PeftModel& pm, const TensorMap& base, const std::string& dir,
                                               const ModelInput& in, const std::string& tag) {
  auto ref = load_safetensors(dir + "/reference.safetensors");
  torch::NoGradGuard ng;
  auto out = pm.forward(in);
  EXPECT_TRUE(torch::allclose(out.logits, ref.at("logits"), 1e-4, 1e-5)) << max_diff(out.logits, ref.at("logits"));
  auto ref_loss = ref.count("task_loss") ? ref.at("task_loss") : ref.at("loss");
  EXPECT_NEAR(out.loss.item<double>(), ref_loss.item<double>(), 1e-5);

  pm.merge();
  auto merged = pm.forward(in);
  EXPECT_TRUE(torch::allclose(merged.logits, ref.at("merged_logits"), 1e-4, 1e-5))
      << max_diff(merged.logits, ref.at("merged_logits"));
  EXPECT_NEAR(merged.loss.item<double>(), ref.at("merged_loss").item<double>(), 1e-5);
  pm.unmerge();
  expect_base_weights_restored(pm, base);
  EXPECT_LT(max_diff(pm.forward(in).logits, out.logits), 1e-5);

  auto tmp = temp_dir(tag);
  pm.save_adapter(tmp);
  expect_same_saved_tensors(dir, tmp);
  auto keys = [](const nlohmann::json& j) {
    std::vector<std::string> k;
    for (auto& kv : j.items()) k.push_back(kv.key());
    std::sort(k.begin(), k.end());
    return k;
  };
  EXPECT_EQ(keys(read_json(dir + "/adapter_config.json")), keys(read_json(tmp + "/adapter_config.json")));
  return tmp;
}

}  // namespace peft::test
