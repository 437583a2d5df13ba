// Ladder side-tuning: identity at init, closed-form parameter count, placement through the
// "block.in" / "norm.final" roles, bit-exact save/load, no merge, float64 finite-difference
// gradients; and the point of the method: a training step leaves the backbone out of autograd
// (no gradient reaches a base parameter, the backbone's hidden states do not require grad, so
// none of its activations are kept for backward), unlike LoRA on the same model.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using namespace peft::test;

struct LstCase {
  std::string name, model;
  nlohmann::json options;
  int64_t side_dim;
  std::vector<std::string> targeted;
};

// L layers, hidden d, side width s (FFN 4 s): L+1 down-projections, L gates, L side blocks
// (LayerNorm, two Linears), the side's final LayerNorm and the up-projection.
int64_t lst_params(int64_t L, int64_t d, int64_t s) {
  const int64_t f = 4 * s;
  return (L + 1) * (s * d + s) + L + L * 2 * s + L * (f * s + f) + L * (s * f + s) + 2 * s + (d * s + d);
}

std::vector<LstCase> lst_cases() {
  // Fixtures: hidden 64, 2 layers.
  return {
      {"llama", "llama", nlohmann::json::object(), 64 / 8,
       {"model.layers.0.input_layernorm", "model.layers.1.input_layernorm", "model.norm"}},
      {"llama_r4", "llama", {{"reduction_factor", 4}}, 64 / 4,
       {"model.layers.0.input_layernorm", "model.layers.1.input_layernorm", "model.norm"}},
      {"gpt2_dim5", "gpt2", {{"side_dim", 5}}, 5, {"transformer.h.0.ln_1", "transformer.h.1.ln_1", "transformer.ln_f"}},
  };
}

class Lst : public ::testing::TestWithParam<LstCase> {};

TEST_P(Lst, IdentityAtInitCountAndPlacement) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model);
  auto in = fixture_input(c.model);
  auto base = logits_of(*pm, in);
  pm->add_adapter("default", method_config("lst", c.options));
  auto rep = pm->trainable_report();
  EXPECT_EQ(rep.trainable, lst_params(2, 64, c.side_dim)) << rep.to_string();
  EXPECT_EQ(rep.by_method["lst"], rep.trainable);
  expect_targeted(*pm, c.targeted);
  expect_identity_at_init(*pm, in, base, /*mergeable=*/false);  // a side network: nothing to fold
}

TEST_P(Lst, SaveLoadBitExact) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model);
  pm->add_adapter("default", method_config("lst", c.options));
  randomize(*pm, 0.3);
  auto dir = expect_save_load_bit_exact(*pm, c.model, fixture_input(c.model), "lst_" + c.name);
  auto cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "LST");
  EXPECT_EQ(cfg["peft_cpp_format_version"], 1);
  auto saved = load_safetensors(dir + "/adapter_model.safetensors");
  const std::string K = "base_model.model." + c.targeted.back();
  EXPECT_EQ(saved.at(K + ".lst_down.weight").sizes(), torch::IntArrayRef({3, c.side_dim, 64}));
  EXPECT_EQ(saved.at(K + ".lst_up.weight").sizes(), torch::IntArrayRef({64, c.side_dim}));
}

TEST_P(Lst, GradientsMatchFiniteDifferences) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model, torch::kFloat64);
  pm->add_adapter("default", method_config("lst", c.options));
  pm->to(torch::kFloat64);
  randomize(*pm, 0.3);
  expect_gradients_match_finite_differences(*pm, fixture_input(c.model), c.name);
}

INSTANTIATE_TEST_SUITE_P(All, Lst, ::testing::ValuesIn(lst_cases()), [](const auto& info) { return info.param.name; });

namespace {
struct StepFacts {
  bool any_base_grad = false, any_hidden_requires_grad = false, all_adapter_grads = true;
};
// One training forward + backward; which tensors autograd touched.
StepFacts train_step(const std::string& method, const nlohmann::json& opts) {
  auto pm = fixture_peft_model("llama");
  pm->add_adapter("default", method_config(method, opts));
  randomize(*pm, 0.3);  // non-zero up-projections, so every adapter tensor gets a gradient
  pm->train();
  auto in = fixture_input("llama");
  in.output_hidden_states = true;
  auto out = pm->forward(in);
  StepFacts f;
  // hidden_states[0 .. L-1] are the block inputs (embeddings, block outputs), before the final norm.
  for (size_t i = 0; i + 1 < out.hidden_states.size(); ++i)
    f.any_hidden_requires_grad |= out.hidden_states[i].requires_grad();
  out.loss.backward();
  for (auto& p : pm->model->named_parameters())
    if (p.key().find("lst_") == std::string::npos && p.key().find("lora_") == std::string::npos)
      f.any_base_grad |= p.value().grad().defined();
  for (auto& t : pm->trainable_parameters()) f.all_adapter_grads &= t.grad().defined() && t.grad().abs().sum().item<double>() > 0;
  return f;
}
}  // namespace

TEST(LstMemory, NoGradientOrActivationsThroughTheBackbone) {
  auto lst = train_step("lst", nlohmann::json::object());
  EXPECT_TRUE(lst.all_adapter_grads);
  EXPECT_FALSE(lst.any_base_grad);
  EXPECT_FALSE(lst.any_hidden_requires_grad);  // the backbone's graph is never recorded
  // The same check on LoRA sees the backbone in the graph: the test can tell the two apart.
  auto lora = train_step("lora", {{"r", 4}});
  EXPECT_TRUE(lora.all_adapter_grads);
  EXPECT_FALSE(lora.any_base_grad);
  EXPECT_TRUE(lora.any_hidden_requires_grad);
}

TEST(LstErrors, ClearMessages) {
  auto message = [](const std::string& model, const nlohmann::json& opts) {
    auto pm = fixture_peft_model(model);
    try {
      pm->add_adapter("x", method_config("lst", opts));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // Post-norm BERT has no module that reads each block's input.
  EXPECT_NE(message("bert_cls", nlohmann::json::object()).find("'block.in'"), std::string::npos);
  EXPECT_NE(message("t5", nlohmann::json::object()).find("'block.in'"), std::string::npos);
  EXPECT_NE(message("llama", {{"reduction_factor", 0}}).find("'reduction_factor'"), std::string::npos);
  EXPECT_NE(message("llama", {{"side_dim", 2.5}}).find("'side_dim'"), std::string::npos);
  EXPECT_NE(message("llama", {{"gate_temperature", -1}}).find("'gate_temperature'"), std::string::npos);
  EXPECT_NE(message("llama", {{"target_modules", {"q_proj"}}}).find("'target_modules'"), std::string::npos);
}
