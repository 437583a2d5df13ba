// LoRA's variants as objects (src/tuners/lora_variants.*): which init and variants a config
// selects, the scale rule in closed form, and that a variant's hooks are what change the layer:
// DoRA's magnitude, LoRA-FA's frozen A, the gate's refusal to merge (a quantized base refusing
// the variants that need its float weight: tests/quant/quant_linear_test.cpp).
// The numbers against Python peft are the fixture tests (lora, rslora, dora, ... in
// tests/fixtures/peft) and the property matrix (tests/tuners/method_matrix_test.cpp).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/lora_layer.h"
#include "tuners/lora_variants.h"
#include "tuners/tuner_test_util.h"

namespace peft::test {
namespace {

nlohmann::json lora_cfg(nlohmann::json over) {
  auto c = find_tuner("LORA")->defaults();
  for (auto& kv : over.items()) c[kv.key()] = kv.value();
  return c;
}

std::vector<std::string> names_of(const std::vector<const LoraVariant*>& v) {
  std::vector<std::string> out;
  for (auto* x : v) out.push_back(x->name());
  return out;
}

TEST(LoraVariants, TheConfigSelectsTheInitAndTheVariantsInOrder) {
  EXPECT_TRUE(lora_variants_of(lora_cfg({})).empty());
  EXPECT_EQ(names_of(lora_variants_of(lora_cfg({{"use_dora", true}, {"use_rslora", true}}))),
            (std::vector<std::string>{"rsLoRA", "DoRA"}));
  EXPECT_EQ(names_of(lora_variants_of(lora_cfg({{"lora_gate", true}, {"dylora", true}, {"lora_fa", true},
                                                 {"delta_lora_lambda", 0.5}}))),
            (std::vector<std::string>{"LoRA-FA", "DyLoRA", "Delta-LoRA", "gated LoRA"}));
  EXPECT_TRUE(lora_variants_of(lora_cfg({{"delta_lora_lambda", 0.0}})).empty());  // λ = 0 is off
  for (auto [value, name] : std::vector<std::pair<nlohmann::json, std::string>>{
           {true, "default"}, {false, "false"}, {"gaussian", "gaussian"}, {"pissa", "pissa"}, {"olora", "olora"}, {"loftq", "loftq"}})
    EXPECT_EQ(lora_init_of(lora_cfg({{"init_lora_weights", value}})).name(), name) << value.dump();
}

TEST(LoraVariants, ScaleIsAlphaOverRankOrOverItsRoot) {
  LoraOptions o;
  o.alpha = 12;
  EXPECT_DOUBLE_EQ(o.scale_for(4), 3.0);
  o.variants = lora_variants_of(lora_cfg({{"use_rslora", true}}));
  EXPECT_DOUBLE_EQ(o.scale_for(4), 6.0);
  EXPECT_DOUBLE_EQ(o.scale_for(9), 4.0);
  EXPECT_TRUE(o.has("rsLoRA"));
  EXPECT_FALSE(o.has("DoRA"));
}

/// The LoRA layers of `pm` for adapter `a`.
std::vector<LoraLinear*> lora_layers(PeftModel& pm, const std::string& a) {
  std::vector<LoraLinear*> out;
  for (auto& [path, t] : pm.tuner_layers())
    if (auto* l = dynamic_cast<LoraLinear*>(t); l && l->has_adapter(a)) out.push_back(l);
  return out;
}

TEST(LoraVariants, HooksChangeTheLayerAsTheVariantSays) {
  auto pm = fixture_peft_model("llama");
  pm->add_adapter("fa", method_config("lora-fa", {{"init_lora_weights", false}}));
  pm->add_adapter("dora", method_config("dora", {{"init_lora_weights", false}}));
  pm->add_adapter("gate", method_config("lora", {{"lora_gate", true}, {"target_modules", {"k_proj"}}}));
  pm->set_adapter(std::vector<std::string>{"fa", "dora"});
  // LoRA-FA: A frozen, B trains.
  for (auto* l : lora_layers(*pm, "fa")) {
    EXPECT_FALSE(l->param("fa", "lora_A.weight").requires_grad());
    EXPECT_TRUE(l->param("fa", "lora_B.weight").requires_grad());
  }
  // DoRA: the magnitude starts at the row norms of W0 + s B A (Liu et al. 2024, eq. 5).
  for (auto* l : lora_layers(*pm, "dora")) {
    auto W = l->base_linear().weight_out_in();
    const double s = l->opt.at("dora").scaling;
    auto want = (W + s * l->param("dora", "lora_B.weight").matmul(l->param("dora", "lora_A.weight"))).norm(2, {1});
    EXPECT_TRUE(torch::allclose(l->param("dora", "lora_magnitude_vector"), want, 1e-6, 1e-6));
  }
  // The gate's layers cannot merge; the others can.
  for (auto& [path, t] : pm->tuner_layers())
    EXPECT_EQ(t->can_merge(), !t->has_adapter("gate")) << path;
}

}  // namespace
}  // namespace peft::test
