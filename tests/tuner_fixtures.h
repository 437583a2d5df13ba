// Helpers for tuner property tests on the tiny fixture models (tests/fixtures/hf/models/<model>):
// the fixture's inputs, a PeftModel over it in eval mode, no-grad logits, random adapter
// weights, and the float64 finite-difference gradient check. Header-only (inline) so that any
// *_test.cpp can use it without a build change.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"

namespace peft::test {

inline ModelInput fixture_input(const std::string& model) {
  auto in = load_safetensors(source_path("tests/fixtures/hf/models/" + model + "/inputs.safetensors"));
  ModelInput mi;
  mi.input_ids = in.at("input_ids").clone();
  mi.attention_mask = in.at("attention_mask").clone();
  if (in.count("token_type_ids")) mi.token_type_ids = in.at("token_type_ids").clone();
  if (in.count("labels")) mi.labels = in.at("labels").clone();
  return mi;
}

inline PeftModelPtr fixture_peft_model(const std::string& model, torch::Dtype dt = torch::kFloat32) {
  auto m = load_model(source_path("tests/fixtures/hf/models/" + model), LoadOptions{std::nullopt, 0, dt});
  m->eval();
  return std::make_shared<PeftModel>(m);
}

inline torch::Tensor logits_of(PeftModel& pm, const ModelInput& in) {
  torch::NoGradGuard ng;
  return pm.forward(in).logits;
}

inline double max_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

/// Every trainable tensor set to N(0, scale^2) entries.
inline void randomize(PeftModel& pm, double scale) {
  torch::NoGradGuard ng;
  for (auto& t : pm.trainable_parameters()) t.copy_(torch::randn_like(t) * scale);
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

/// Autograd against central differences (h = 1e-6, float64 model) at the first and last entry
/// of every trainable tensor whose name `skip` does not reject.
inline void expect_gradients_match_fd(PeftModel& pm, const ModelInput& in, const std::string& label,
                                      const std::function<bool(const std::string&)>& skip = nullptr) {
  auto named = pm.named_trainable_parameters();
  ASSERT_FALSE(named.empty()) << label;
  pm.forward(in).loss.backward();
  torch::NoGradGuard ng;
  for (auto& [name, p] : named) {
    ASSERT_TRUE(p.grad().defined()) << label << " " << name;
    if (skip && skip(name)) continue;
    auto flat = p.view({-1});
    auto g = p.grad().view({-1});
    for (int64_t idx : {int64_t(0), flat.numel() - 1}) {
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

}  // namespace peft::test
