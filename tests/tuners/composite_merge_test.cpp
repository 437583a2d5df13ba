// COMPOSITE merge where two components wrap the same module: merged == forward (1e-5) for every
// pair of mergeable methods in both stacking orders, or a clear refusal that leaves the model
// unmerged (DoRA stacked on another adapter: its forward normalises the base weight, not the
// adapted one). Before the fix, LoRA + IA3 on v_proj merged 3e-2 away from the forward.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"
#include "tuners/wave2_util.h"

using namespace peft;
using namespace peft::test;

namespace {

struct Part {
  std::string name;
  nlohmann::json cfg;
};

std::vector<Part> mergeable_parts() {
  return {
      {"lora", {{"peft_type", "LORA"}, {"r", 4}}},
      {"dora", {{"peft_type", "LORA"}, {"r", 4}, {"use_dora", true}}},
      {"ia3", {{"peft_type", "IA3"}, {"feedforward_modules", nlohmann::json::array()}}},
      {"ia3_ff", {{"peft_type", "IA3"}, {"feedforward_modules", {"c_attn"}}}},
      {"loha", {{"peft_type", "LOHA"}, {"r", 2}}},
      {"lokr", {{"peft_type", "LOKR"}, {"r", 2}}},
      {"vera", {{"peft_type", "VERA"}, {"r", 4}}},
      {"adalora", {{"peft_type", "ADALORA"}, {"init_r", 4}, {"target_r", 2}, {"total_step", 10}}},
      {"hadamard", {{"peft_type", "HADAMARD"}}},
      {"bitfit", {{"peft_type", "BITFIT"}}},
      {"sparse_delta", {{"peft_type", "SPARSE_DELTA"}, {"density", 0.1}}},
  };
}

/// GPT-2 (Conv1D c_attn with a bias) with random biases, so bias handling shows.
PeftModelPtr gpt2_with_biases() {
  auto pm = wave2_peft_model("gpt2");
  torch::manual_seed(5);
  torch::NoGradGuard ng;
  for (auto& p : pm->model->named_parameters())
    if (p.key().find("bias") != std::string::npos) p.value().copy_(0.1 * torch::randn_like(p.value()));
  return pm;
}

/// Every trainable tensor moved away from its init (IA3 / Hadamard stay near 1, LoRA's B leaves 0).
void perturb(PeftModel& pm) {
  torch::NoGradGuard ng;
  for (auto& t : pm.trainable_parameters()) t.add_(0.2 * torch::randn_like(t));
}

}  // namespace

TEST(CompositeMerge, EveryStackedPairMergesToItsForwardOrRefuses) {
  auto parts = mergeable_parts();
  auto in = wave2_input("gpt2");
  std::set<std::string> refused, want_refused;
  int checked = 0;
  for (auto& inner : parts)
    for (auto& outer : parts) {
      if (inner.cfg["peft_type"] == outer.cfg["peft_type"]) continue;  // refused by COMPOSITE itself
      const std::string label = inner.name + "+" + outer.name;
      if (outer.name == "dora") want_refused.insert(label);
      auto pm = gpt2_with_biases();
      auto a = inner.cfg, b = outer.cfg;
      a["target_modules"] = b["target_modules"] = {"c_attn"};
      pm->add_adapter("default", {{"peft_type", "COMPOSITE"}, {"components", {a, b}}});
      perturb(*pm);
      auto out = logits_of(*pm, in);
      std::string err;
      try {
        pm->merge();
      } catch (const Error& e) {
        err = e.what();
      }
      if (!err.empty()) {
        refused.insert(label);
        EXPECT_NE(err.find("(components.1)"), std::string::npos) << label << ": " << err;
        EXPECT_NE(err.find("cannot be merged"), std::string::npos) << label << ": " << err;
        EXPECT_TRUE(torch::equal(logits_of(*pm, in), out)) << label << ": half merged";
        continue;
      }
      ++checked;
      EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-5) << label << " merged";
      pm->unmerge();
      EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-5) << label << " unmerged";
    }
  EXPECT_EQ(refused, want_refused);
  EXPECT_GT(checked, 80);
}

// The case on Llama: LoRA then IA3 on v_proj (IA3 scales LoRA's output), and the
// reverse order, merge to the forward.
TEST(CompositeMerge, LoraAndIa3OnValueProjection) {
  for (bool lora_first : {true, false}) {
    auto pm = fixture_peft_model("llama");
    nlohmann::json lora = {{"peft_type", "LORA"}, {"r", 4}, {"target_modules", {"v_proj"}}};
    nlohmann::json ia3 = {{"peft_type", "IA3"}, {"target_modules", {"v_proj"}}, {"feedforward_modules", nlohmann::json::array()}};
    pm->add_adapter("default", {{"peft_type", "COMPOSITE"},
                                {"components", lora_first ? nlohmann::json{lora, ia3} : nlohmann::json{ia3, lora}}});
    perturb(*pm);
    auto in = fixture_input("llama");
    auto out = logits_of(*pm, in);
    pm->merge();
    EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-5) << lora_first;
    auto merged = pm->merge_and_unload();
    torch::NoGradGuard ng;
    EXPECT_LT(max_diff(merged->forward(in).logits, out), 1e-5) << lora_first;
  }
}
