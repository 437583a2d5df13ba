// add_weighted_adapter against Python peft 0.13.2 (tests/fixtures/wave2/adapters/llama/weighted_*,
// made from multi_a + multi_b with weights [0.7, 0.3], density 0.5, torch.manual_seed(31337)):
// non-SVD factors within 1e-6, SVD types' B @ A within 1e-5 (their factors are defined up to
// sign), logits within 1e-5, DARE masks with the manifest's nonzero counts in peft's draw order,
// peft's refusals, and the saved folder reloading to the same logits.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <iostream>

#include "peft/combine.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"
#include "tuners/merge_ops.h"
#include "tuners/wave2_util.h"

using namespace peft;
using namespace peft::test;

namespace {

const nlohmann::json& manifest() {
  static const nlohmann::json m = read_json(wave2_path("manifest.json"));
  return m;
}

PeftModelPtr with_adapters(const std::string& second = "multi_b", const std::string& second_name = "b") {
  auto pm = wave2_peft_model("llama");
  pm->load_adapter(wave2_path("adapters/llama/multi_a"), "a");
  pm->load_adapter(wave2_path("adapters/llama/" + second), second_name);
  return pm;
}

/// The add_weighted_adapter call a fixture records (manifest adapters['llama/weighted_<case>']).
CombineOptions options_of(const nlohmann::json& e) {
  CombineOptions o;
  o.combination_type = e["combination_type"].get<std::string>();
  if (!e["density"].is_null()) o.density = e["density"].get<double>();
  if (!e["majority_sign_method"].is_null()) o.majority_sign_method = e["majority_sign_method"].get<std::string>();
  o.seed = e["torch_manual_seed_before_call"].get<uint64_t>();
  return o;
}

bool is_svd_type(const std::string& t) { return t.size() >= 3 && t.compare(t.size() - 3, 3, "svd") == 0; }

const std::vector<std::string> kCases = {"svd",     "linear",      "cat",       "ties",           "ties_frequency",
                                         "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
                                         "magnitude_prune", "magnitude_prune_svd"};

torch::Tensor logits(PeftModel& pm, const ModelInput& in) {
  torch::NoGradGuard ng;
  return pm.forward(in).logits;
}

class CombineFixture : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST(Combine, ManifestListsEveryCase) {
  std::set<std::string> want(kCases.begin(), kCases.end()), got;
  for (auto& kv : manifest()["weighted"].items()) got.insert(kv.key());
  EXPECT_EQ(got, want);
}

TEST_P(CombineFixture, MatchesPeft) {
  const std::string key = GetParam();
  const std::string dir = wave2_path("adapters/llama/weighted_" + key);
  const auto& e = manifest()["adapters"]["llama/weighted_" + key];
  auto pm = with_adapters();
  auto opts = options_of(e);
  std::vector<std::pair<torch::Tensor, bool>> flags;
  for (auto& p : pm->parameters()) flags.emplace_back(p, p.requires_grad());
  auto res = add_weighted_adapter(*pm, {"a", "b"}, e["weights"].get<std::vector<double>>(), "w", opts);

  EXPECT_EQ(res.combination_type, opts.combination_type);
  EXPECT_EQ(res.r, e["new_rank"].get<int64_t>());
  EXPECT_EQ(res.modules, e["module_order"].get<std::vector<std::string>>());
  EXPECT_EQ(pm->active_adapters(), std::vector<std::string>{"a"});  // unchanged
  for (auto& [p, flag] : flags) EXPECT_EQ(p.requires_grad(), flag);  // unchanged
  for (auto& kv : pm->tuner_layers())  // the new adapter is frozen
    if (kv.second->has_adapter("w"))
      for (auto& t : kv.second->trainable_tensors("w")) EXPECT_FALSE(t.requires_grad()) << kv.first;

  // DARE: the masks peft drew, in its order, after its N_init discarded draws.
  const auto& masks = e["masks"];
  ASSERT_EQ(res.masks.size(), masks.size());
  if (!masks.empty()) EXPECT_EQ(res.init_draws, e["rng_draws_before_first_mask"].get<int64_t>());
  for (size_t i = 0; i < masks.size(); ++i) {
    const auto& m = masks[i];
    EXPECT_EQ(res.masks[i].module, m["module"].get<std::string>()) << i;
    EXPECT_EQ(res.masks[i].tensor, m["tensor"].get<std::string>()) << i;
    EXPECT_EQ(res.masks[i].adapter, m["adapter"].get<std::string>()) << i;
    EXPECT_EQ(res.masks[i].shape, m["shape"].get<std::vector<int64_t>>()) << i;
    EXPECT_EQ(res.masks[i].nonzero, m["nonzero"].get<int64_t>()) << key << " mask " << i << " " << m["module"];
  }

  // Factors (or B @ A for the SVD types) against peft's file.
  auto theirs = load_safetensors(dir + "/adapter_model.safetensors");
  auto ours = pm->adapter_state_dict("w");
  ASSERT_EQ(ours.size(), theirs.size());
  double worst = 0;  // largest factor (or B @ A) difference, reported below
  for (auto& [k, t] : theirs) {
    ASSERT_TRUE(ours.count(k)) << k;
    ASSERT_EQ(ours.at(k).sizes(), t.sizes()) << k;
    if (!is_svd_type(key)) {
      worst = std::max(worst, max_diff(ours.at(k), t));
      EXPECT_LE(max_diff(ours.at(k), t), 1e-6) << key << " " << k;
    } else if (k.find("lora_A.weight") != std::string::npos) {
      auto kb = k.substr(0, k.size() - std::string("lora_A.weight").size()) + "lora_B.weight";
      auto want = theirs.at(kb).matmul(t), got = ours.at(kb).matmul(ours.at(k));
      worst = std::max(worst, max_diff(got, want));
      EXPECT_LE(max_diff(got, want), 1e-5) << key << " B@A " << k;
    }
  }

  // Logits of the new adapter alone against peft's.
  pm->set_adapter("w");
  auto ref = load_safetensors(dir + "/reference.safetensors");
  expect_reference_outputs(*pm, "llama", ref, "", key);
  std::cout << "[ combine  ] " << key << ": max |" << (is_svd_type(key) ? "B@A" : "factor") << " diff| " << worst
            << ", max |logit diff| " << max_diff(logits(*pm, wave2_input("llama")), ref.at("logits")) << "\n";

  // Saved as a normal folder: peft's config fields, and it reloads to the same logits.
  auto tmp = temp_dir("combine_" + key);
  pm->save_adapter(tmp, "w");
  expect_same_config(read_json(dir + "/adapter_config.json"), read_json(tmp + "/adapter_config.json"), key);
  EXPECT_FALSE(file_exists(tmp + "/peft_cpp_config.json"));
  auto pm2 = wave2_peft_model("llama");
  pm2->load_adapter(tmp, "w");
  auto in = wave2_input("llama");
  EXPECT_TRUE(torch::equal(logits(*pm2, in), logits(*pm, in))) << key;
}

INSTANTIATE_TEST_SUITE_P(Weighted, CombineFixture, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

TEST(Combine, UnequalRanksRefusedAsPeft) {
  auto pm = with_adapters("multi_c_r2", "c");
  const auto& results = manifest()["weighted_unequal_ranks"]["results"];
  for (auto& [type, r] : results.items()) {
    CombineOptions o;
    o.combination_type = type;
    o.density = 0.5;
    o.seed = 31337;
    const size_t before = pm->adapters().size();
    if (r["accepted"].get<bool>()) {
      auto res = add_weighted_adapter(*pm, {"a", "c"}, {0.7, 0.3}, "w_" + type, o);
      EXPECT_EQ(res.r, r["new_rank"].get<int64_t>()) << type;
      EXPECT_EQ(pm->adapters().size(), before + 1);
    } else {
      const std::string name = "w_" + type;  // (a structured binding: not capturable before C++20)
      auto err = error_of([&] { add_weighted_adapter(*pm, {"a", "c"}, {0.7, 0.3}, name, o); });
      EXPECT_NE(err.find("All adapters must have the same r value"), std::string::npos) << type << ": " << err;
      EXPECT_EQ(pm->adapters().size(), before) << type;  // nothing half-applied
    }
  }
}

TEST(Combine, BadInputIsRefusedBeforeAnythingChanges) {
  auto pm = with_adapters();
  pm->load_adapter(wave2_path("adapters/llama/vera_proj"), "v");
  auto in = wave2_input("llama");
  auto before_logits = logits(*pm, in);
  const size_t before = pm->adapters().size();
  auto attempt = [&](std::vector<std::string> names, std::vector<double> w, CombineOptions o, const std::string& want,
                     const std::string& new_name = "w") {
    auto err = error_of([&] { add_weighted_adapter(*pm, names, w, new_name, o); });
    EXPECT_NE(err.find(want), std::string::npos) << "want '" << want << "', got: " << err;
    EXPECT_EQ(pm->adapters().size(), before);
  };
  CombineOptions o;
  o.combination_type = "nonsense";
  attempt({"a", "b"}, {0.7, 0.3}, o, "unknown combination_type 'nonsense'");
  o.combination_type = "ties";
  attempt({"a", "b"}, {0.7, 0.3}, o, "needs a density");
  for (double d : {0.0, -0.5, 1.5}) {
    o.density = d;
    attempt({"a", "b"}, {0.7, 0.3}, o, "density must be in (0, 1]");
  }
  o.density = 0.5;
  attempt({"a", "b"}, {0.7}, o, "2 adapters but 1 weights");
  attempt({"a", "nope"}, {0.7, 0.3}, o, "no adapter named 'nope'");
  attempt({"a", "v"}, {0.7, 0.3}, o, "is a VERA adapter; only LoRA adapters can be combined");
  attempt({"a", "b"}, {0.7, -0.3}, o, "sqrt(weight * scaling)");
  attempt({"a", "b"}, {0.7, 0.3}, o, "already exists", "a");
  o.majority_sign_method = "median";
  attempt({"a", "b"}, {0.7, 0.3}, o, "majority_sign_method must be");
  o = CombineOptions();
  o.svd_rank = 1000;
  attempt({"a", "b"}, {0.7, 0.3}, o, "svd_rank 1000 exceeds min(out, in)");
  o = CombineOptions();
  o.svd_driver = "gesvd";
  attempt({"a", "b"}, {0.7, 0.3}, o, "only supported for CUDA");
  EXPECT_TRUE(torch::equal(logits(*pm, in), before_logits));
  // Negative weights are fine where peft takes no square root (task negation).
  o = CombineOptions();
  o.combination_type = "cat";
  EXPECT_NO_THROW(add_weighted_adapter(*pm, {"a", "b"}, {1.0, -1.0}, "neg", o));
}

TEST(Combine, DareRescaleIsThePapersOneOverDensity) {
  // density 0.5: the kept entries are doubled, exactly (a power of two), with the same masks.
  for (std::string type : {"dare_linear", "dare_ties"}) {
    auto pm = with_adapters();
    CombineOptions o;
    o.combination_type = type;
    o.density = 0.5;
    o.seed = 7;
    auto plain = add_weighted_adapter(*pm, {"a", "b"}, {0.7, 0.3}, "plain", o);
    o.dare_rescale = true;
    auto scaled = add_weighted_adapter(*pm, {"a", "b"}, {0.7, 0.3}, "scaled", o);
    ASSERT_EQ(plain.masks.size(), scaled.masks.size());
    for (size_t i = 0; i < plain.masks.size(); ++i) EXPECT_EQ(plain.masks[i].nonzero, scaled.masks[i].nonzero);
    auto p = pm->adapter_state_dict("plain"), s = pm->adapter_state_dict("scaled");
    for (auto& [k, t] : p) EXPECT_TRUE(torch::equal(s.at(k), 2 * t)) << type << " " << k;
  }
}

TEST(Combine, SeedMakesDareReproducible) {
  auto pm = with_adapters();
  CombineOptions o;
  o.combination_type = "dare_ties";
  o.density = 0.3;
  o.seed = 123;
  add_weighted_adapter(*pm, {"a", "b"}, {0.5, 0.5}, "x", o);
  add_weighted_adapter(*pm, {"a", "b"}, {0.5, 0.5}, "y", o);
  o.seed = 124;
  add_weighted_adapter(*pm, {"a", "b"}, {0.5, 0.5}, "z", o);
  auto x = pm->adapter_state_dict("x"), y = pm->adapter_state_dict("y"), z = pm->adapter_state_dict("z");
  bool any_diff = false;
  for (auto& [k, t] : x) {
    EXPECT_TRUE(torch::equal(t, y.at(k))) << k;
    any_diff = any_diff || !torch::equal(t, z.at(k));
  }
  EXPECT_TRUE(any_diff);
  // density 1 prunes nothing: dare_linear is then linear.
  o.combination_type = "dare_linear";
  o.density = 1.0;
  auto r = add_weighted_adapter(*pm, {"a", "b"}, {0.5, 0.5}, "d1", o);
  EXPECT_TRUE(r.masks.empty());
  o.combination_type = "linear";
  add_weighted_adapter(*pm, {"a", "b"}, {0.5, 0.5}, "lin", o);
  auto d1 = pm->adapter_state_dict("d1"), lin = pm->adapter_state_dict("lin");
  for (auto& [k, t] : lin) EXPECT_TRUE(torch::equal(t, d1.at(k))) << k;
}

TEST(Combine, SingleAdapterIsLinearClosedForm) {
  // peft: one adapter -> linear; A' = sqrt(w s) A, B' = sqrt(w s) B, so B'A' = w s B A.
  auto pm = with_adapters();
  CombineOptions o;  // "svd" requested
  auto res = add_weighted_adapter(*pm, {"b"}, {0.5}, "half_b", o);
  EXPECT_EQ(res.combination_type, "linear");
  auto b = pm->adapter_state_dict("b"), h = pm->adapter_state_dict("half_b");
  const float c = static_cast<float>(std::sqrt(0.5 * 4.0));  // s_b = 16 / 4
  for (auto& [k, t] : b) EXPECT_TRUE(torch::equal(h.at(k), t * c)) << k;
}

TEST(Combine, SvdRankAndClamp) {
  auto pm = with_adapters();
  CombineOptions o;
  o.combination_type = "svd";
  o.svd_rank = 8;  // rank of the full delta sum (4 + 4 where both target a module)
  add_weighted_adapter(*pm, {"a", "b"}, {0.7, 0.3}, "r8", o);
  o.svd_rank.reset();
  auto r8 = pm->adapter_state_dict("r8");
  // The svd delta is sum_i w_i s_i (s_i B_i A_i) (peft weights the scaled deltas); its rank is
  // at most 8, so rank 8 keeps it all: B A equals the closed form built from a and b.
  auto a = pm->adapter_state_dict("a"), b = pm->adapter_state_dict("b");
  for (auto& [k, t] : r8) {
    if (k.find("lora_A.weight") == std::string::npos) continue;
    auto kb = k.substr(0, k.size() - 13) + "lora_B.weight";
    auto want = torch::zeros({r8.at(kb).size(0), t.size(1)});
    if (a.count(k)) want += 0.7 * 2.0 * (2.0 * a.at(kb).matmul(a.at(k)));
    if (b.count(k)) want += 0.3 * 4.0 * (4.0 * b.at(kb).matmul(b.at(k)));
    EXPECT_LE(max_diff(r8.at(kb).matmul(t), want), 1e-5) << k;
  }
  // svd_clamp: every factor entry lies within the quantile of the unclamped entries.
  o.combination_type = "svd";
  o.svd_clamp = 0.9;
  add_weighted_adapter(*pm, {"a", "b"}, {0.7, 0.3}, "clamped", o);
  o.svd_clamp.reset();
  add_weighted_adapter(*pm, {"a", "b"}, {0.7, 0.3}, "unclamped", o);
  auto c = pm->adapter_state_dict("clamped"), u = pm->adapter_state_dict("unclamped");
  for (auto& [k, t] : u) {
    if (k.find("lora_A.weight") == std::string::npos) continue;
    auto kb = k.substr(0, k.size() - 13) + "lora_B.weight";
    auto hi = torch::quantile(torch::cat({u.at(kb).flatten(), t.flatten()}), 0.9).item<float>();
    EXPECT_TRUE(torch::equal(c.at(k), t.clamp(-hi, hi))) << k;
    EXPECT_TRUE(torch::equal(c.at(kb), u.at(kb).clamp(-hi, hi))) << kb;
  }
}

namespace {
/// Σ_i w_i ΔW_i at every module of `layers` (ΔW from each layer's own delta_weight: s_i B_i A_i).
void expect_delta_is_weighted_sum(PeftModel& pm, const std::string& combined, const std::vector<std::string>& names,
                                  const std::vector<double>& w, double tol) {
  torch::NoGradGuard ng;
  int checked = 0;
  for (auto& [path, layer] : pm.tuner_layers()) {
    if (!layer->has_adapter(combined)) continue;
    torch::Tensor want;
    for (size_t i = 0; i < names.size(); ++i) {
      if (!layer->has_adapter(names[i])) continue;
      auto d = w[i] * layer->delta_weight(names[i]);
      want = want.defined() ? want + d : d;
    }
    EXPECT_LE(max_diff(layer->delta_weight(combined), want), tol) << combined << " " << path;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}
}  // namespace

TEST(Combine, Conv1dLayoutAndRsloraScaling) {
  // GPT-2's Conv1D c_attn (weight [in, out]): peft's delta there is [in, out]; the combined
  // adapter must still be the plain lora_A [r, in], lora_B [out, r] of any LoRA.
  auto m = load_model(wave2_path("models/gpt2"));
  m->eval();
  auto pm = std::make_shared<PeftModel>(m);
  pm->add_adapter("x", method_config("lora", {{"r", 4}, {"lora_alpha", 8}, {"target_modules", {"c_attn"}}}));
  pm->add_adapter("y", method_config("rslora", {{"r", 4}, {"lora_alpha", 6}, {"target_modules", {"c_attn", "c_fc"}}}));
  pm->set_adapter(std::vector<std::string>{"x", "y"});
  randomize(*pm, 0.1);
  CombineOptions o;
  o.combination_type = "cat";  // B A = Σ w_i s_i B_i A_i exactly
  add_weighted_adapter(*pm, {"y", "x"}, {0.6, -0.4}, "c", o);
  // The first adapter (y) has use_rslora: we keep the combined scaling 1 with alpha = sqrt(r).
  EXPECT_DOUBLE_EQ(pm->adapter("c").config["lora_alpha"].get<double>(), std::sqrt(8.0));
  expect_delta_is_weighted_sum(*pm, "c", {"y", "x"}, {0.6, -0.4}, 1e-6);
  // svd at full rank (8 >= rank of the sum) keeps Σ v_i D_i with v_i = w_i s_i (s_i twice, as peft).
  o.combination_type = "svd";
  o.svd_rank = 8;
  add_weighted_adapter(*pm, {"x", "y"}, {0.6, 0.4}, "s", o);
  const double sx = 8.0 / 4.0, sy = 6.0 / std::sqrt(4.0);
  expect_delta_is_weighted_sum(*pm, "s", {"x", "y"}, {0.6 * sx, 0.4 * sy}, 1e-5);
  // DARE on an svd type draws each mask over peft's [in, out] delta of a Conv1D.
  o.combination_type = "dare_linear_svd";
  o.svd_rank.reset();  // the largest input rank, 4
  o.density = 0.5;
  o.seed = 1;
  auto res = add_weighted_adapter(*pm, {"x", "y"}, {0.6, 0.4}, "d", o);
  ASSERT_FALSE(res.masks.empty());
  EXPECT_EQ(res.masks[0].module, "transformer.h.0.attn.c_attn");
  EXPECT_EQ(res.masks[0].shape, (std::vector<int64_t>{64, 192}));
  for (auto& kv : pm->adapter_state_dict("d"))
    if (kv.first.find("c_attn.lora_A") != std::string::npos) EXPECT_EQ(kv.second.sizes(), (c10::IntArrayRef{4, 64}));
}

TEST(Combine, RegexTargetsAreAlternatedAndMixedKindsRefused) {
  auto pm = wave2_peft_model("llama");
  pm->add_adapter("p", method_config("lora", {{"r", 2}, {"target_modules", ".*layers\\.0\\.self_attn\\.q_proj"}}));
  pm->add_adapter("q", method_config("lora", {{"r", 2}, {"target_modules", ".*layers\\.1\\.mlp\\.up_proj"}}));
  pm->add_adapter("l", method_config("lora", {{"r", 2}, {"target_modules", {"k_proj"}}}));
  pm->set_adapter(std::vector<std::string>{"p", "q", "l"});
  randomize(*pm, 0.1);
  CombineOptions o;
  o.combination_type = "linear";
  auto res = add_weighted_adapter(*pm, {"p", "q"}, {1.0, 1.0}, "pq", o);
  EXPECT_EQ(pm->adapter("pq").config["target_modules"],
            "(.*layers\\.0\\.self_attn\\.q_proj)|(.*layers\\.1\\.mlp\\.up_proj)");
  EXPECT_EQ(res.modules, (std::vector<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"}));
  // One adapter per module: linear with c = sqrt(w s) on both factors gives w s B A there.
  expect_delta_is_weighted_sum(*pm, "pq", {"p", "q"}, {1.0, 1.0}, 1e-6);
  auto err = error_of([&] { add_weighted_adapter(*pm, {"p", "l"}, {1.0, 1.0}, "pl", o); });
  EXPECT_NE(err.find("mix of list/set and string is not supported"), std::string::npos) << err;
}

TEST(Combine, TiesSignElectionByHand) {
  // density 1 (no trimming), weights 1: total elects sign(Σ X) = (-, -, +); frequency elects
  // sign(Σ sign X) = (0, 0, 2) -> all + (a tie counts as +); the mean runs over agreeing entries.
  std::vector<torch::Tensor> X = {torch::tensor({1.0f, -2.0f, 0.5f}), torch::tensor({-3.0f, 1.0f, 0.5f})};
  auto w = torch::tensor({1.0f, 1.0f});
  merge_ops::Spec s{"ties", 1.0, "total", false};
  EXPECT_TRUE(torch::equal(merge_ops::merge(X, w, s), torch::tensor({-3.0f, -2.0f, 0.5f})));
  s.sign_method = "frequency";
  EXPECT_TRUE(torch::equal(merge_ops::merge(X, w, s), torch::tensor({1.0f, 1.0f, 0.5f})));
  // Trimming at density 0.5 keeps int(0.5 * 3) = 1 entry each (the largest |x|): (0, -2, 0) and
  // (-3, 0, 0); a trimmed 0 never agrees, so nothing is averaged with it.
  s = {"ties", 0.5, "total", false};
  EXPECT_TRUE(torch::equal(merge_ops::merge(X, torch::tensor({0.5f, 2.0f}), s), torch::tensor({-6.0f, -1.0f, 0.0f})));
  s = {"magnitude_prune", 0.5, "total", false};
  EXPECT_TRUE(torch::equal(merge_ops::merge(X, torch::tensor({0.5f, 2.0f}), s), torch::tensor({-6.0f, -1.0f, 0.0f})));
}
