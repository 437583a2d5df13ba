// One property matrix for every registered method (issue 18 item 4), keyed by the registry:
// method_names() instantiates the tests, so a method registered without a row below fails
// MethodMatrix.*.HasARow. Each row is the method's capability line on the llama fixture
// (hidden 64, FFN 128, 2 layers, q/o 64 -> 64, k/v 64 -> 32 (2 kv heads of 16), 3 RMSNorms [64]):
// its options, its trainable count in closed form, what it does at init, whether it merges,
// whether training writes the base on purpose. The properties, the same for every method:
//   - the trainable count is the closed form;
//   - at init: the base logits bit for bit (or within 1e-5 where the method rewrites the base,
//     PiSSA/OLoRA), or, for random-init methods, logits that differ;
//   - random adapter weights change the output; merge() gives the same logits and unmerge()
//     restores every base weight and the logits, or merge() is refused and nothing changed;
//   - save -> load into a fresh model is bit-exact (tensors and logits);
//   - float64 autograd equals central finite differences for every trainable tensor;
//   - a few optimizer steps leave every frozen base weight bit for bit as it was, and move the
//     adapter.
// Training through `peft train` on the bundled model, for the same registry, is
// tests/cli/train_methods_test.cpp. Method-specific rules (masks, gates, schedules, peft's
// fixtures) stay in the per-family tests.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <set>

#include "peft/error.h"
#include "peft/tuner.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using namespace peft::test;

namespace {

enum class AtInit {
  Identity,      // the base logits, bit for bit
  NearIdentity,  // within 1e-5: the base weight is rewritten (W - BA) and BA added back
  Changes,       // random virtual tokens / prefixes, or a quantized base (LoftQ)
};

struct MethodRow {
  nlohmann::json options;  // on the llama fixture
  int64_t trainable;       // closed form
  AtInit at_init;
  bool merges;
  bool trains_base = false;  // Delta-LoRA: W moves by the LoRA update's delta (Zi et al. 2023, eq. 7)
  // Saved as the equivalent plain LoRA on the unmodified base (PiSSA, OLoRA: peft's
  // path_initial_model_for_weight_conversion; Delta-LoRA): reloaded logits within 1e-5, and
  // re-saving the reloaded adapter gives the same file bit for bit.
  bool saved_as_lora = false;
  // Trainable tensors (a name fragment) whose autograd gradient is, by design, not the full
  // derivative, so finite differences do not apply; their gradient must still exist.
  const char* fd_exempt = nullptr;
};

// One layer of LoRA rank r on q_proj (64 -> 64) and v_proj (64 -> 32): A [r, in] + B [out, r].
constexpr int64_t lora_qv(int64_t r) { return r * (64 + 64) + r * (64 + 32); }
// A bottleneck adapter of width 4 (64 / reduction_factor 16) on a 64-wide output: down and up
// Linears with biases.
constexpr int64_t kAdapter = 4 * 64 + 4 + 64 * 4 + 64;
// MAD-X's invertible adapter (NICE coupling, reduction factor 2) on the 64-wide embeddings: F and
// G each Linear(32 -> 16) and Linear(16 -> 32) with biases.
constexpr int64_t kInvertible = 2 * (32 * 16 + 16 + 16 * 32 + 32);
// The seven projections' weights of one layer, and their output widths (the biases BitFit adds).
constexpr int64_t kLayerWeights = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 128 * 64;
constexpr int64_t kLayerOuts = 64 + 32 + 32 + 64 + 128 + 128 + 64;
// A PHM layer [out, in] with n rules of rank r (Compacter, Karimi Mahabadi et al. 2021, eq. 5):
// W_left [n, out/n, r], W_right [n, r, in/n] and the bias [out]; the rules are shared.
constexpr int64_t phm(int64_t out, int64_t in, int64_t n, int64_t r) { return n * r * (out / n + in / n) + out; }
constexpr int64_t kPhmAdapter = phm(4, 64, 4, 1) + phm(64, 4, 4, 1);
constexpr int64_t kPhmRules = 2 * 4 * 4 * 4;  // down and up rules, n^3 each
// Ladder side-tuning with L = 2 layers, hidden 64, side width s = 8 (FFN 4 s): L + 1
// down-projections, L gates, L side blocks (a norm and two Linears), the final norm, the up-projection.
constexpr int64_t lst(int64_t L, int64_t d, int64_t s) {
  return (L + 1) * (s * d + s) + L + L * 2 * s + L * (4 * s * s + 4 * s) + L * (s * 4 * s + s) + 2 * s + (d * s + d);
}
// A prefix of P virtual tokens: keys and values for each of the 2 layers, 32 kv dims each.
constexpr int64_t prefix(int64_t P) { return P * 2 * 2 * 32; }

const std::map<std::string, MethodRow>& matrix() {
  using J = nlohmann::json;
  const J none = J::object();
  static const std::map<std::string, MethodRow> rows = {
      // Reparameterized: LoRA and its variants on q, v (rank 8 by default).
      {"lora", {none, 2 * lora_qv(8), AtInit::Identity, true}},
      {"rslora", {none, 2 * lora_qv(8), AtInit::Identity, true}},
      // + a magnitude per output. ||W + BA|| is detached (Liu et al. 2024, sec. 4.3), so only
      // the magnitude's gradient is the full derivative.
      {"dora", {none, 2 * (lora_qv(8) + 64 + 32), AtInit::Identity, true, false, false, "lora_"}},
      {"pissa", {none, 2 * lora_qv(8), AtInit::NearIdentity, true, false, /*saved_as_lora=*/true}},
      {"olora", {none, 2 * lora_qv(8), AtInit::NearIdentity, true, false, /*saved_as_lora=*/true}},
      {"loftq", {none, 2 * lora_qv(8), AtInit::Changes, true}},      // the base becomes Q(W)
      {"lora-fa", {none, 2 * 8 * (64 + 32), AtInit::Identity, true}},  // B only (A frozen)
      {"dylora", {none, 2 * lora_qv(8), AtInit::Identity, true}},
      // Saved as the equivalent rank-2r LoRA (B A and the base's share B_K A_K).
      {"delta-lora", {none, 2 * lora_qv(8), AtInit::Identity, true, /*trains_base=*/true, /*saved_as_lora=*/true}},
      // VeRA r 32: lambda_b [out] and lambda_d [r] per module (the projections are frozen).
      {"vera", {none, 2 * ((64 + 32) + (32 + 32)), AtInit::Identity, true}},
      // LoHa: two rank-8 pairs per module.
      {"loha", {none, 2 * (2 * 8 * (64 + 64) + 2 * 8 * (64 + 32)), AtInit::Identity, true}},
      // LoKr: 64 = 8 x 8 and 32 = 4 x 8; w1 [out_a, in_a] and, as r 8 >= max(out_b, in_b) / 2,
      // a full w2 [out_b, in_b]: q 8x8 + 8x8, v 4x8 + 8x8.
      {"lokr", {none, 2 * ((8 * 8 + 8 * 8) + (4 * 8 + 8 * 8)), AtInit::Identity, true}},
      // AdaLoRA, init_r 12: P [r, in], Q [out, r] and Lambda [r, 1] per module.
      {"adalora", {{{"total_step", 10}}, 2 * (12 * (64 + 64) + 12 + 12 * (64 + 32) + 12), AtInit::Identity, true}},
      // Additive.
      {"ia3", {none, 2 * (32 + 32 + 128), AtInit::Identity, true}},  // k, v outputs, down_proj input
      {"prompt-tuning", {{{"num_virtual_tokens", 4}}, 4 * 64, AtInit::Changes, false}},
      // P-tuning's MLP encoder 64 -> 32 -> 32 -> 64 over 4 virtual token embeddings.
      {"p-tuning",
       {{{"num_virtual_tokens", 4}, {"encoder_hidden_size", 32}},
        4 * 64 + (64 * 32 + 32) + (32 * 32 + 32) + (32 * 64 + 64), AtInit::Changes, false}},
      // Prefix tuning with its projection: 4 embeddings of the kv width 32, 32 -> 32 -> 128.
      {"prefix-tuning",
       {{{"num_virtual_tokens", 4}, {"encoder_hidden_size", 32}}, 4 * 32 + (32 * 32 + 32) + (32 * 128 + 128),
        AtInit::Changes, false}},
      {"p-tuning-v2", {{{"num_virtual_tokens", 4}}, prefix(4), AtInit::Changes, false}},
      {"bottleneck", {none, 2 * 2 * kAdapter, AtInit::Identity, false}},  // Houlsby: after attention and FFN
      {"houlsby", {none, 2 * 2 * kAdapter, AtInit::Identity, false}},
      {"pfeiffer", {none, 2 * kAdapter, AtInit::Identity, false}},
      {"pfeiffer-inv", {none, 2 * kAdapter + kInvertible, AtInit::Identity, false}},
      {"parallel-adapter", {none, 2 * kAdapter, AtInit::Identity, false}},
      {"compacter", {{{"reduction_factor", 16}}, 4 * kPhmAdapter + kPhmRules, AtInit::Identity, false}},
      {"compacter++", {{{"reduction_factor", 16}}, 2 * kPhmAdapter + kPhmRules, AtInit::Identity, false}},
      // Hadamard: w and b [64] at each attention output; o_proj has no bias to fold b into.
      {"hadamard", {none, 2 * 2 * 64, AtInit::Identity, false}},
      {"lst", {none, lst(2, 64, 64 / 8), AtInit::Identity, false}},
      // Partial.
      {"bitfit", {{{"add_missing_biases", true}}, 2 * kLayerOuts, AtInit::Identity, false}},
      {"ln-tuning", {none, 5 * 64, AtInit::Identity, true}},
      {"layer-freeze", {{{"num_trainable_layers", 1}}, kLayerWeights + 2 * 64, AtInit::Identity, true}},
      // k = round(0.01 numel) per projection: 41, 20, 20, 41, 82, 82, 82.
      {"sparse-delta", {none, 2 * (41 + 20 + 20 + 41 + 3 * 82), AtInit::Identity, true}},
      // Global top-k after calibration: round(0.01 * 73728) = 737, round(0.1 * 73728) = 7373.
      {"fish-mask", {{{"density", 0.01}, {"fisher_batches", 2}}, 737, AtInit::Identity, true}},
      {"child-tuning-d", {{{"reserve_p", 0.1}, {"fisher_batches", 2}}, 7373, AtInit::Identity, true}},
      {"child-tuning-f", {none, 2 * kLayerWeights, AtInit::Identity, true}},
      {"diff-pruning", {{{"density", 0.05}}, 2 * 2 * kLayerWeights, AtInit::Identity, true}},  // w and alpha
      {"lt-sft", {{{"density", 0.01}, {"phase1_steps", 1}}, 2 * kLayerWeights, AtInit::Identity, true}},  // dense phase 1
      // Hybrid and unified.
      {"mam", {{{"num_virtual_tokens", 4}}, prefix(4) + 2 * kAdapter, AtInit::Changes, false}},
      // S4, uniform groups: Houlsby on both layers, LoRA r 8 on layer 0, a prefix of 10 on layer
      // 1... (see unified_test.cpp), BitFit's added biases on layer 1.
      {"s4", {{{"s4_grouping", "uniform"}}, 4 * kAdapter + lora_qv(8) + prefix(10) + kLayerOuts, AtInit::Changes, false}},
      // UniPELT: gated LoRA r 8 (a gate of 64 + 1 per module), a gated adapter, a gated prefix of 10.
      {"unipelt", {none, 2 * (lora_qv(8) + 2 * 65) + 2 * (kAdapter + 65) + prefix(10) + 2 * 65, AtInit::Changes, false}},
      // ProPETL: a shared prototype LoRA and one mask score per prototype entry per layer.
      // The loss is piecewise constant in the mask scores; autograd gives the straight-through
      // estimate (ProPetl.MasksSharedPrototypeAndStraightThroughScores checks it).
      {"propetl", {none, 3 * lora_qv(8), AtInit::Identity, true, false, false, "propetl_scores"}},
      {"adamix", {none, 2 * 4 * kAdapter, AtInit::Identity, false}},  // 4 experts at each FFN output
      {"composite",
       {{{"components", J::array({{{"peft_type", "LORA"}, {"r", 4}}, {{"peft_type", "IA3"}}})}},
        2 * lora_qv(4) + 2 * (32 + 32 + 128), AtInit::Identity, true}},
  };
  return rows;
}

const MethodRow* row_of(const std::string& m) {
  auto it = matrix().find(m);
  return it == matrix().end() ? nullptr : &it->second;
}
std::string no_row(const std::string& m) {
  return "method '" + m + "' is registered without a row in tests/tuners/method_matrix_test.cpp (docs/CONTRIBUTING.md)";
}

/// The fixture with adapter "default" of method `m` added; data-driven masks calibrated on the
/// fixture batch, as Trainer::train does before the first step.
PeftModelPtr with_adapter(const std::string& m, const MethodRow& row, const ModelInput& in,
                          torch::Dtype dt = torch::kFloat32) {
  auto pm = fixture_peft_model("llama", dt);
  pm->add_adapter("default", method_config(m, row.options));
  if (dt != torch::kFloat32) pm->to(dt);
  if (pm->needs_calibration()) pm->calibrate([&] { return pm->forward(in).loss; });
  return pm;
}

/// The base weights (state-dict keys of the plain fixture) of pm's model, cloned.
TensorMap base_weights(const PeftModel& pm) {
  static const std::set<std::string> plain = [] {
    std::set<std::string> keys;
    for (auto& kv : fixture_peft_model("llama")->model->state_dict()) keys.insert(kv.first);
    return keys;
  }();
  TensorMap out;
  for (auto& kv : pm.model->state_dict()) {
    std::string k = kv.first;
    for (auto pos = k.find(".base_layer"); pos != std::string::npos; pos = k.find(".base_layer")) k.erase(pos, 11);
    if (plain.count(k)) out[k] = kv.second.clone();
  }
  return out;
}

class MethodMatrix : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(MethodMatrix, HasARow) {
  ASSERT_NE(row_of(GetParam()), nullptr) << no_row(GetParam());
  EXPECT_NE(method_card(GetParam()), nullptr) << GetParam() << " has no catalog card (src/tuners/catalog.cpp)";
}

TEST_P(MethodMatrix, TrainableCountIsTheClosedForm) {
  const auto* row = row_of(GetParam());
  ASSERT_NE(row, nullptr) << no_row(GetParam());
  auto in = fixture_input("llama");
  auto pm = with_adapter(GetParam(), *row, in);
  auto rep = pm->trainable_report();
  EXPECT_EQ(rep.trainable, row->trainable) << rep.to_string();
}

TEST_P(MethodMatrix, AtInitThenMergeOrRefusal) {
  const auto* row = row_of(GetParam());
  ASSERT_NE(row, nullptr) << no_row(GetParam());
  auto in = fixture_input("llama");
  const auto base = logits_of(*fixture_peft_model("llama"), in);
  auto pm = with_adapter(GetParam(), *row, in);
  auto init = logits_of(*pm, in);
  // Prompt tuning and P-tuning prepend their virtual tokens: compare the real positions.
  auto real = init.size(1) > base.size(1) ? init.narrow(1, init.size(1) - base.size(1), base.size(1)) : init;
  ASSERT_EQ(real.sizes(), base.sizes());
  switch (row->at_init) {
    case AtInit::Identity: EXPECT_TRUE(torch::equal(real, base)) << max_diff(real, base); break;
    case AtInit::NearIdentity: EXPECT_LT(max_diff(real, base), 1e-5); break;
    case AtInit::Changes: EXPECT_GT(max_diff(real, base), 1e-6); break;
  }
  auto weights = base_weights(*pm);
  perturb(*pm, 0.1);
  auto out = logits_of(*pm, in);
  EXPECT_GT(max_diff(out, init), 1e-5) << "random adapter weights leave the output unchanged";
  if (row->merges) {
    pm->merge();
    EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-4);
    pm->unmerge();
    expect_base_weights_restored(*pm, weights);
    EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-5);
  } else {
    EXPECT_THROW(pm->merge(), Error);
    EXPECT_TRUE(torch::equal(logits_of(*pm, in), out)) << "a refused merge changed the model";
  }
}

TEST_P(MethodMatrix, SaveLoadBitExact) {
  const auto* row = row_of(GetParam());
  ASSERT_NE(row, nullptr) << no_row(GetParam());
  auto in = fixture_input("llama");
  auto pm = with_adapter(GetParam(), *row, in);
  perturb(*pm, 0.1);
  if (!row->saved_as_lora) {
    expect_save_load_bit_exact(*pm, "llama", in, "matrix_" + GetParam());
    return;
  }
  auto out = logits_of(*pm, in);
  auto dir = temp_dir("matrix_" + GetParam());
  pm->save_adapter(dir);
  auto pm2 = fixture_peft_model("llama");
  pm2->load_adapter(dir);
  EXPECT_LT(max_diff(logits_of(*pm2, in), out), 1e-5);
  auto dir2 = temp_dir("matrix_" + GetParam() + "_again");
  pm2->save_adapter(dir2);
  auto first = load_safetensors(dir + "/adapter_model.safetensors");
  auto second = load_safetensors(dir2 + "/adapter_model.safetensors");
  ASSERT_EQ(first.size(), second.size());
  for (auto& kv : first) {
    ASSERT_TRUE(second.count(kv.first)) << kv.first;
    EXPECT_TRUE(torch::equal(kv.second, second.at(kv.first))) << kv.first;
  }
}

TEST_P(MethodMatrix, GradientsMatchFiniteDifferences) {
  const auto* row = row_of(GetParam());
  ASSERT_NE(row, nullptr) << no_row(GetParam());
  auto in = fixture_input("llama");
  auto pm = with_adapter(GetParam(), *row, in, torch::kFloat64);
  perturb(*pm, 0.1);
  const char* exempt = row->fd_exempt;
  expect_gradients_match_finite_differences(*pm, in, GetParam(), 1, [exempt](const std::string& name) {
    return exempt && name.find(exempt) != std::string::npos;
  });
}

TEST_P(MethodMatrix, TrainingLeavesTheFrozenBaseAlone) {
  const auto* row = row_of(GetParam());
  ASSERT_NE(row, nullptr) << no_row(GetParam());
  auto in = fixture_input("llama");
  auto pm = with_adapter(GetParam(), *row, in);
  const auto before = base_weights(*pm);
  std::vector<torch::Tensor> adapter;
  for (auto& t : pm->trainable_parameters()) adapter.push_back(t.detach().clone());
  auto sgd = [&] { return std::make_unique<torch::optim::SGD>(pm->trainable_parameters(), torch::optim::SGDOptions(0.1)); };
  auto opt = sgd();
  for (int64_t step = 0; step < 3; ++step) {
    opt->zero_grad();
    auto loss = pm->forward(in).loss;
    auto extra = pm->extra_loss();
    if (extra.defined()) loss = loss + extra;
    loss.backward();
    pm->before_step(step);
    opt->step();
    pm->after_step(step);
    if (pm->take_optimizer_reset()) opt = sgd();
  }
  const auto after = base_weights(*pm);
  ASSERT_EQ(after.size(), before.size());
  std::set<std::string> moved;
  for (auto& kv : before)
    if (!torch::equal(kv.second, after.at(kv.first))) moved.insert(kv.first);
  if (row->trains_base) {
    // Only the weights under the adapter move.
    EXPECT_FALSE(moved.empty());
    for (auto& k : moved) EXPECT_TRUE(k.find("q_proj") != std::string::npos || k.find("v_proj") != std::string::npos) << k;
  } else {
    EXPECT_TRUE(moved.empty()) << moved.size() << " base weights moved, e.g. " << *moved.begin();
  }
  bool changed = false;
  auto now = pm->trainable_parameters();
  for (size_t i = 0; i < adapter.size() && i < now.size(); ++i) changed |= !torch::equal(adapter[i], now[i]);
  EXPECT_TRUE(changed || adapter.size() != now.size()) << "three optimizer steps left every adapter tensor as it was";
}

// Rows for methods that are no longer registered are stale.
TEST(MethodMatrixRows, EveryRowIsARegisteredMethod) {
  auto names = method_names();
  std::set<std::string> known(names.begin(), names.end());
  for (auto& kv : matrix()) EXPECT_TRUE(known.count(kv.first)) << "row for unregistered method '" << kv.first << "'";
}

INSTANTIATE_TEST_SUITE_P(Registry, MethodMatrix, ::testing::ValuesIn(peft::method_names()), [](const auto& info) {
  std::string n = info.param;
  for (auto& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = ch == '+' ? 'p' : '_';
  return n;
});
