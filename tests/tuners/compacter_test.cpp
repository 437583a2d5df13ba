// Compacter / Compacter++: identity at init, closed-form parameter counts (shared and per-layer
// PHM rules), placement through roles, the PHM weight equals Σ_i A_i ⊗ (W_left_i W_right_i)
// (eq. 5, checked with torch::kron), bit-exact save/load with the shared rules saved once,
// no merge, float64 finite-difference gradients (the shared rules included).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using namespace peft::test;

struct CompacterCase {
  std::string name, model, method;
  nlohmann::json options;
  int64_t expected_trainable;
  std::vector<std::string> targeted;
};

// Parameters of one PHM layer [out, in] with n rules of rank r (rules not counted): the factors
// W_left [n, out/n, r] and W_right [n, r, in/n], and the bias [out].
int64_t phm_params(int64_t out, int64_t in, int64_t n, int64_t r) { return n * r * (out / n + in / n) + out; }

std::vector<CompacterCase> compacter_cases() {
  // Fixtures: hidden 64, 2 layers. reduction_factor 16 -> bottleneck k = 4.
  const int64_t d = 64;
  auto adapter = [&](int64_t k, int64_t n, int64_t r) { return phm_params(k, d, n, r) + phm_params(d, k, n, r); };
  const int64_t rules4 = 2 * 4 * 4 * 4;  // down and up rules, n^3 each
  const std::string L0 = "model.layers.0.", L1 = "model.layers.1.";
  const nlohmann::json rf16 = {{"reduction_factor", 16}};
  return {
      {"compacter", "llama", "compacter", rf16, 4 * adapter(4, 4, 1) + rules4,
       {L0 + "self_attn.o_proj", L0 + "mlp.down_proj", L1 + "self_attn.o_proj", L1 + "mlp.down_proj"}},
      {"compacter_pp", "llama", "compacter++", rf16, 2 * adapter(4, 4, 1) + rules4,
       {L0 + "mlp.down_proj", L1 + "mlp.down_proj"}},
      {"per_layer_rules", "llama", "compacter++", {{"reduction_factor", 16}, {"shared_phm_rule", false}},
       2 * (adapter(4, 4, 1) + rules4), {L0 + "mlp.down_proj", L1 + "mlp.down_proj"}},
      {"n2_rank2_k8", "llama", "compacter++", {{"reduction_factor", 8}, {"phm_dim", 2}, {"phm_rank", 2}},
       2 * adapter(8, 2, 2) + 2 * 2 * 2 * 2, {L0 + "mlp.down_proj", L1 + "mlp.down_proj"}},
      {"bert_pp", "bert_cls", "compacter++", rf16, 2 * adapter(4, 4, 1) + rules4,
       {"bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"}},
  };
}

class Compacter : public ::testing::TestWithParam<CompacterCase> {};

TEST_P(Compacter, IdentityAtInitCountAndPlacement) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model);
  auto in = fixture_input(c.model);
  auto base = logits_of(*pm, in);
  pm->add_adapter("default", method_config(c.method, c.options));
  EXPECT_EQ(pm->trainable_report().by_method["compacter"], c.expected_trainable) << pm->trainable_report().to_string();
  expect_targeted(*pm, c.targeted);
  expect_identity_at_init(*pm, in, base, /*mergeable=*/false);  // non-linear
}

TEST_P(Compacter, SaveLoadBitExact) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model);
  pm->add_adapter("default", method_config(c.method, c.options));
  randomize(*pm, 0.3);
  auto dir = expect_save_load_bit_exact(*pm, c.model, fixture_input(c.model), "compacter_" + c.name);
  auto cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "COMPACTER");
  EXPECT_EQ(cfg["peft_cpp_format_version"], 1);
  auto saved = load_safetensors(dir + "/adapter_model.safetensors");
  const std::string K = "base_model.model." + c.targeted[0];
  EXPECT_TRUE(saved.count(K + ".compacter_down.W_left"));
  EXPECT_TRUE(saved.count(K + ".compacter_up.bias"));
  bool shared = c.options.value("shared_phm_rule", true);
  EXPECT_EQ(saved.count("base_model.phm_rule_down"), shared ? 1u : 0u);
  EXPECT_EQ(saved.count(K + ".compacter_up.phm_rule"), shared ? 0u : 1u);
}

TEST_P(Compacter, GradientsMatchFiniteDifferences) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model, torch::kFloat64);
  pm->add_adapter("default", method_config(c.method, c.options));
  pm->to(torch::kFloat64);
  randomize(*pm, 0.3);
  expect_gradients_match_finite_differences(*pm, fixture_input(c.model), c.name);
}

INSTANTIATE_TEST_SUITE_P(All, Compacter, ::testing::ValuesIn(compacter_cases()),
                         [](const auto& info) { return info.param.name; });

// One adapted slot against the paper's formula written independently with torch::kron:
// h = base(x), y = h + gelu(h W_down^T + b_down) W_up^T + b_up, W = Σ_i A_i ⊗ (W_left_i W_right_i).
TEST(CompacterPhm, MatchesKroneckerSum) {
  auto pm = fixture_peft_model("llama", torch::kFloat64);
  pm->add_adapter("default", method_config("compacter++", {{"reduction_factor", 16}, {"init_weights", false}}));
  pm->to(torch::kFloat64);
  const std::string path = "model.layers.1.mlp.down_proj";
  auto sd = pm->adapter_state_dict("default");
  auto phm = [&](const std::string& p, const std::string& rule) {
    auto A = sd.at("base_model." + rule), L = sd.at("base_model.model." + path + "." + p + ".W_left"),
         R = sd.at("base_model.model." + path + "." + p + ".W_right");
    torch::Tensor W;
    for (int64_t i = 0; i < A.size(0); ++i) {
      auto term = torch::kron(A[i], L[i].matmul(R[i]));
      W = W.defined() ? W + term : term;
    }
    return W;
  };
  auto W_down = phm("compacter_down", "phm_rule_down"), W_up = phm("compacter_up", "phm_rule_up");
  ASSERT_EQ(W_down.sizes(), torch::IntArrayRef({4, 64}));  // [k, hidden]
  ASSERT_EQ(W_up.sizes(), torch::IntArrayRef({64, 4}));
  LayerPtr slot;
  for (auto& ref : find_slots(*pm->model))
    if (ref.path == path) slot = ref.get();
  ASSERT_TRUE(slot);
  torch::NoGradGuard ng;
  auto x = torch::randn({3, 128}, torch::kFloat64);
  auto y = slot->forward(x);
  pm->disable_adapters();
  auto h = slot->forward(x);
  pm->disable_adapters(false);
  auto b_down = sd.at("base_model.model." + path + ".compacter_down.bias"),
       b_up = sd.at("base_model.model." + path + ".compacter_up.bias");
  auto want = h + torch::gelu(h.matmul(W_down.t()) + b_down).matmul(W_up.t()) + b_up;
  EXPECT_LT(max_diff(y, want), 1e-10);
}

TEST(CompacterErrors, ClearMessages) {
  auto pm = fixture_peft_model("llama");
  auto message = [&](const nlohmann::json& opts) {
    try {
      pm->add_adapter("x", method_config("compacter", opts));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // Default reduction_factor 32 on hidden 64: k = 2, not divisible by phm_dim 4.
  EXPECT_NE(message(nlohmann::json::object()).find("'phm_dim'"), std::string::npos);
  EXPECT_NE(message({{"phm_rank", 0}}).find("'phm_rank'"), std::string::npos);
  EXPECT_NE(message({{"phm_dim", -1}}).find("'phm_dim'"), std::string::npos);
  EXPECT_NE(message({{"adapter_type", "serial"}}).find("'adapter_type'"), std::string::npos);
  EXPECT_NE(message({{"shared_phm_rule", 1}}).find("'shared_phm_rule'"), std::string::npos);
  EXPECT_TRUE(pm->adapters().empty());  // nothing half-added
}
