// Partial fine-tuning (BitFit, LN tuning, layer freezing, sparse deltas, FISH, Child-Tuning,
// diff pruning, LT-SFT): identity at init, closed-form parameter counts, merge == unmerged (and
// unmerge restores the base), bit-exact save/load, finite-difference gradients in float64, clear
// errors.
// Then each sparse method's own rule in closed form (which entries train, gates, penalties).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using peft::test::source_path;
using peft::test::temp_dir;

namespace {

using peft::test::fixture_input;
using peft::test::max_diff;

PeftModelPtr peft_model(const std::string& model, torch::Dtype dt = torch::kFloat32) {
  return peft::test::fixture_peft_model(model, dt);
}

using peft::test::logits_of;

using peft::test::perturb;

}  // namespace

struct PartialCase {
  std::string name, model, method;
  nlohmann::json options;
  int64_t expected_trainable;
  bool mergeable;
  bool end_phase1 = false;  // LT-SFT: a dense phase 1 of one step, then the entries that moved most
};

namespace {
// What the Trainer does before and at the first step: data-driven masks (FISH, Child-Tuning_D)
// from the fixture batch; LT-SFT's phase 1 (one step of random updates), then its selection.
void prepare(PeftModel& pm, const PartialCase& c, const ModelInput& in) {
  if (pm.needs_calibration()) pm.calibrate([&] { return pm.forward(in).loss; });
  if (c.end_phase1) {
    perturb(pm, 0.1);
    pm.after_step(0);
  }
}
}  // namespace

std::vector<PartialCase> partial_cases() {
  // llama (2 layers): q 64->64, k/v 64->32, o 64->64, gate/up 64->128, down 128->64, 3 RMSNorms [64]
  // (two per layer + final); bert_cls (2 layers, hidden 64, FFN 128): classifier copy 2*64+2.
  const int64_t outs = 64 + 32 + 32 + 64 + 128 + 128 + 64;
  const int64_t block = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 2 * 128 * 64 + 64 * 128 + 2 * 64;
  const int64_t head = 2 * 64 + 2;
  // k = round(0.01 * numel) per Linear: 41, 20, 20, 41, 82, 82, 82.
  const int64_t sparse = 41 + 20 + 20 + 41 + 82 + 82 + 82;
  const int64_t weights = 2 * (64 * 64 + 2 * 32 * 64 + 64 * 64 + 3 * 128 * 64);  // 2 layers of 36864
  // bert biases per layer: q, k, v, attention.output.dense, intermediate (128), output.dense,
  // two LayerNorms; plus embeddings.LayerNorm and pooler.dense.
  const int64_t bert_bias = 2 * (4 * 64 + 128 + 64 + 2 * 64) + 64 + 64;
  return {
      {"bitfit_added", "llama", "bitfit", {{"add_missing_biases", true}}, 2 * outs, false},
      {"bitfit_bert", "bert_cls", "bitfit", nlohmann::json::object(), bert_bias + head, true},
      {"ln_tuning", "llama", "ln-tuning", nlohmann::json::object(), 5 * 64, true},
      {"ln_tuning_bert", "bert_cls", "ln-tuning", nlohmann::json::object(), 5 * 2 * 64 + head, true},
      {"layer_freeze", "llama", "layer-freeze", {{"num_trainable_layers", 1}}, block, true},
      {"layer_freeze_all", "llama", "layer-freeze", {{"num_trainable_layers", 2}}, 2 * block, true},
      {"sparse_magnitude", "llama", "sparse-delta", nlohmann::json::object(), 2 * sparse, true},
      {"sparse_random", "llama", "sparse-delta", {{"selection", "random"}, {"seed", 7}}, 2 * sparse, true},
      // Weight deltas over all 7 projections of both layers: 73728 entries; global top-k masks
      // keep round(0.01 * 73728) = 737 and round(0.1 * 73728) = 7373 of them.
      {"fish_mask", "llama", "fish-mask", {{"density", 0.01}, {"fisher_batches", 2}}, 737, true},
      {"child_tuning_d", "llama", "child-tuning-d", {{"reserve_p", 0.1}, {"fisher_batches", 2}}, 7373, true},
      {"child_tuning_f", "llama", "child-tuning-f", nlohmann::json::object(), weights, true},
      {"diff_pruning", "llama", "diff-pruning", {{"density", 0.05}}, 2 * weights, true},  // w and alpha
      // No pruning and gates inside (0, 1): the gate parameters get non-zero gradients.
      {"diff_pruning_open", "llama", "diff-pruning", {{"density", 1.0}, {"alpha_init", 0.5}}, 2 * weights, true},
      {"lt_sft", "llama", "lt-sft", {{"density", 0.01}, {"phase1_steps", 1}}, 737, true, true},
  };
}

class Partial : public ::testing::TestWithParam<PartialCase> {};

TEST_P(Partial, IdentityCountMergeSaveLoad) {
  auto c = GetParam();
  auto pm = peft_model(c.model);
  auto in = fixture_input(c.model);
  auto base = logits_of(*pm, in);
  auto base_weights = pm->model->state_dict();
  for (auto& kv : base_weights) kv.second = kv.second.clone();
  pm->add_adapter("default", method_config(c.method, c.options));
  prepare(*pm, c, in);
  auto rep = pm->trainable_report();
  EXPECT_EQ(rep.trainable, c.expected_trainable) << rep.to_string();
  EXPECT_TRUE(torch::equal(logits_of(*pm, in), base)) << max_diff(logits_of(*pm, in), base);
  perturb(*pm, 0.1);
  auto out = logits_of(*pm, in);
  EXPECT_GT(max_diff(out, base), 1e-5);

  if (c.mergeable) {
    pm->merge();
    EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-5);
    pm->unmerge();
    peft::test::expect_base_weights_restored(*pm, base_weights);
    EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-5);
  } else {
    EXPECT_THROW(pm->merge(), Error);
  }

  // Against the logits before merge/unmerge (unmerge leaves the base weights rounded, 1e-6).
  auto dir = temp_dir("partial_" + c.name);
  pm->save_adapter(dir);
  auto pm2 = peft_model(c.model);
  pm2->load_adapter(dir);
  peft::test::expect_same_adapter(*pm, *pm2);
  EXPECT_TRUE(torch::equal(logits_of(*pm2, in), out));
}

TEST_P(Partial, GradientsMatchFiniteDifferences) {
  auto c = GetParam();
  auto pm = peft_model(c.model, torch::kFloat64);
  pm->add_adapter("default", method_config(c.method, c.options));
  pm->to(torch::kFloat64);
  auto in = fixture_input(c.model);
  prepare(*pm, c, in);
  perturb(*pm, 0.1);
  peft::test::expect_gradients_match_finite_differences(*pm, in, c.name);
}

INSTANTIATE_TEST_SUITE_P(All, Partial, ::testing::ValuesIn(partial_cases()), [](const auto& info) { return info.param.name; });

TEST(BitFit, BiasFreeModelIsRefusedClearly) {
  auto pm = peft_model("llama");
  try {
    pm->add_adapter("default", method_config("bitfit"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add_missing_biases"), std::string::npos) << e.what();
  }
}

TEST(LnTuning, PeftKeyNames) {
  auto pm = peft_model("llama");
  pm->add_adapter("default", method_config("ln-tuning"));
  auto sd = pm->adapter_state_dict("default");
  EXPECT_TRUE(sd.count("base_model.model.model.layers.0.input_layernorm.ln_tuning_layers.weight"));
  EXPECT_TRUE(sd.count("base_model.model.model.norm.ln_tuning_layers.weight"));
  EXPECT_EQ(sd.size(), 5u);
  auto dir = temp_dir("ln_tuning_cfg");
  pm->save_adapter(dir);
  auto cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "LN_TUNING");
  auto targets = cfg["target_modules"].get<std::vector<std::string>>();
  std::sort(targets.begin(), targets.end());
  EXPECT_EQ(targets, (std::vector<std::string>{"input_layernorm", "norm", "post_attention_layernorm"}));
}

TEST(SparseDelta, StoredSparselyAtTheLargestWeights) {
  auto pm = peft_model("llama");
  auto W = pm->model->state_dict().at("model.layers.0.self_attn.q_proj.weight").clone();
  pm->add_adapter("default", method_config("sparse-delta", {{"density", 0.05}}));
  auto sd = pm->adapter_state_dict("default");
  auto idx = sd.at("base_model.model.model.layers.0.self_attn.q_proj.sparse_indices");
  auto vals = sd.at("base_model.model.model.layers.0.self_attn.q_proj.sparse_values");
  EXPECT_EQ(idx.scalar_type(), torch::kLong);
  EXPECT_EQ(idx.numel(), 205);  // round(0.05 * 4096)
  EXPECT_EQ(vals.numel(), 205);
  auto want = std::get<0>(std::get<1>(W.abs().reshape({-1}).topk(205)).sort());
  EXPECT_TRUE(torch::equal(idx, want));
  // Merging writes exactly the selected entries.
  {
    torch::NoGradGuard ng;
    for (auto& t : pm->trainable_parameters()) t.fill_(0.5);
  }
  pm->merge();
  auto Wm = pm->model->state_dict().at("model.layers.0.self_attn.q_proj.base_layer.weight");
  auto changed = ((Wm - W).abs() > 1e-7).reshape({-1}).nonzero().reshape({-1});
  EXPECT_TRUE(torch::equal(changed, want));
}

// ---- FISH, Child-Tuning, diff pruning, LT-SFT ------------------------------------------------

namespace {

// The dense delta of every targeted weight, by module path ("model.layers.0.self_attn.q_proj").
std::map<std::string, torch::Tensor> deltas(PeftModel& pm) {
  std::map<std::string, torch::Tensor> out;
  const std::string pre = "base_model.model.", suf = ".delta_weight.default";
  for (auto& [name, p] : pm.named_trainable_parameters())
    if (name.size() > suf.size() && name.compare(name.size() - suf.size(), suf.size(), suf) == 0)
      out[name.substr(pre.size(), name.size() - pre.size() - suf.size())] = p;
  return out;
}

// The saved (ascending) flat indices of every targeted weight.
std::map<std::string, torch::Tensor> saved_indices(PeftModel& pm) {
  std::map<std::string, torch::Tensor> out;
  for (auto& [key, t] : pm.adapter_state_dict("default")) {
    const std::string pre = "base_model.model.", suf = ".sparse_indices";
    if (key.size() > suf.size() && key.compare(key.size() - suf.size(), suf.size(), suf) == 0)
      out[key.substr(pre.size(), key.size() - pre.size() - suf.size())] = t;
  }
  return out;
}

// Independent global top-k: entries whose score reaches the k-th largest over all tensors.
std::map<std::string, torch::Tensor> expected_top(const std::map<std::string, torch::Tensor>& scores, int64_t k) {
  std::vector<torch::Tensor> flat;
  for (auto& kv : scores) flat.push_back(kv.second.reshape({-1}));
  auto thr = std::get<0>(torch::cat(flat).sort(0, /*descending=*/true))[k - 1].item<double>();
  std::map<std::string, torch::Tensor> out;
  for (auto& kv : scores) out[kv.first] = (kv.second.reshape({-1}) >= thr).nonzero().reshape({-1});
  return out;
}

void expect_same_indices(const std::map<std::string, torch::Tensor>& got, const std::map<std::string, torch::Tensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (auto& kv : want) EXPECT_TRUE(torch::equal(got.at(kv.first), kv.second)) << kv.first;
}

void expect_error_naming(const std::string& method, const nlohmann::json& opts, const std::string& field) {
  auto pm = peft_model("llama");
  try {
    pm->add_adapter("default", method_config(method, opts));
    FAIL() << method << " " << opts.dump() << ": no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'" + field + "'"), std::string::npos) << e.what();
  }
}

}  // namespace

// Hand-built loss sum_l <C_l * b, D_l> at calibration batch b = 1, 2, 3: dL/dD_l = b C_l, so the
// Fisher information is C_l^2 * mean(b^2) and the mask is the global top-k of |C_l|.
TEST(FishMask, SelectsTheLargestSquaredGradientsGlobally) {
  torch::manual_seed(3);
  auto pm = peft_model("llama");
  pm->add_adapter("default", method_config("fish-mask", {{"density", 0.02}, {"fisher_batches", 3}}));
  auto D = deltas(*pm);
  ASSERT_EQ(D.size(), 14u);
  std::map<std::string, torch::Tensor> C;
  for (auto& kv : D) C[kv.first] = torch::randn(kv.second.sizes()) * (1 + int64_t(C.size() % 3));  // scales differ by layer
  int calls = 0;
  pm->calibrate([&] {
    ++calls;
    torch::Tensor loss = torch::zeros({});
    for (auto& kv : D) loss = loss + (C.at(kv.first) * double(calls) * kv.second).sum();
    return loss;
  });
  EXPECT_EQ(calls, 3);
  std::map<std::string, torch::Tensor> score;
  for (auto& kv : C) score[kv.first] = kv.second.abs();
  const int64_t k = std::llround(0.02 * 73728);  // 1475
  auto got = saved_indices(*pm);
  expect_same_indices(got, expected_top(score, k));
  EXPECT_EQ(pm->trainable_report().trainable, k);
  for (auto& kv : D) EXPECT_FALSE(kv.second.grad().defined()) << "calibration left a gradient on " << kv.first;
}

TEST(FishMask, RefusesToTrainWithoutAMask) {
  auto pm = peft_model("llama");
  pm->add_adapter("default", method_config("fish-mask"));
  try {
    pm->before_step(0);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("calibrate"), std::string::npos) << e.what();
  }
}

// Gradients of the masked-out entries are zero: only the selected entries ever change.
TEST(ChildTuningD, OnlyTheSelectedEntriesGetGradients) {
  auto pm = peft_model("llama");
  auto in = fixture_input("llama");
  pm->add_adapter("default", method_config("child-tuning-d", {{"reserve_p", 0.05}, {"fisher_batches", 1}}));
  pm->calibrate([&] { return pm->forward(in).loss; });
  pm->train();
  pm->forward(in).loss.backward();
  auto idx = saved_indices(*pm);
  int64_t nonzero = 0;
  for (auto& [path, d] : deltas(*pm)) {
    auto g = d.grad().reshape({-1});
    auto outside = torch::ones_like(g, torch::kBool).index_fill(0, idx.at(path), false);
    EXPECT_EQ(g.masked_select(outside).abs().max().item<double>(), 0.0) << path;
    nonzero += (g != 0).sum().item<int64_t>();
  }
  EXPECT_GT(nonzero, 0);
}

// Child-Tuning_F (eq. 7): each step every gradient entry is kept with probability p and scaled by
// 1/p, with a fresh mask per step.
TEST(ChildTuningF, GradientMaskIsBernoulliScaled) {
  torch::manual_seed(5);
  const double p = 0.3;
  auto pm = peft_model("llama");
  pm->add_adapter("default", method_config("child-tuning-f", {{"reserve_p", p}}));
  auto D = deltas(*pm);
  std::vector<torch::Tensor> first;
  for (int step = 0; step < 2; ++step) {
    int64_t kept = 0, total = 0;
    for (auto& kv : D) kv.second.mutable_grad() = torch::ones_like(kv.second);
    pm->before_step(step);
    size_t i = 0;
    for (auto& kv : D) {
      auto g = kv.second.grad();
      auto is_kept = g != 0;
      EXPECT_TRUE(torch::allclose(g.masked_select(is_kept), torch::full({is_kept.sum().item<int64_t>()}, 1 / p)));
      kept += is_kept.sum().item<int64_t>();
      total += g.numel();
      if (step == 0) first.push_back(is_kept.clone());
      else EXPECT_FALSE(torch::equal(is_kept, first[i])) << "the same mask twice: " << kv.first;
      ++i;
    }
    // 73728 Bernoulli(0.3) draws: standard deviation of the kept fraction ~0.0017.
    EXPECT_NEAR(double(kept) / total, p, 0.01);
  }
  EXPECT_EQ(pm->trainable_report().trainable, 73728);
}

// LT-SFT: after phase1_steps steps, the global top-k entries by |W1 - W0| are kept and reset to W0.
TEST(LtSft, KeepsTheEntriesThatMovedMostAndResets) {
  torch::manual_seed(9);
  auto pm = peft_model("llama");
  pm->add_adapter("default", method_config("lt-sft", {{"density", 0.03}, {"phase1_steps", 3}}));
  auto D = deltas(*pm);
  std::map<std::string, torch::Tensor> moved;
  {
    torch::NoGradGuard ng;
    for (auto& kv : D) {
      kv.second.copy_(torch::randn(kv.second.sizes()));
      moved[kv.first] = kv.second.abs().clone();
    }
  }
  pm->after_step(0);
  pm->after_step(1);
  EXPECT_EQ(pm->trainable_report().trainable, 73728);  // still phase 1
  EXPECT_TRUE(saved_indices(*pm).empty());
  pm->after_step(2);
  const int64_t k = std::llround(0.03 * 73728);
  EXPECT_EQ(pm->trainable_report().trainable, k);
  expect_same_indices(saved_indices(*pm), expected_top(moved, k));
  for (auto& kv : D) EXPECT_EQ(kv.second.abs().max().item<double>(), 0.0) << kv.first;
}

// Diff pruning: the expected-L0 penalty lambda * sum sigmoid(alpha - beta log(-l/r)) (Louizos et
// al. eq. 12) while training, none at eval; the deterministic gate clamp(sigmoid(alpha)(r-l)+l, 0, 1).
TEST(DiffPruning, PenaltyAndDeterministicGateInClosedForm) {
  const double a0 = 0.3, l = -0.1, r = 1.1, beta = 2.0 / 3.0, lambda = 0.01;
  auto pm = peft_model("llama");
  pm->add_adapter("default", method_config("diff-pruning", {{"density", 1.0}, {"alpha_init", a0}, {"stretch_l", l},
                                                            {"stretch_r", r}, {"temperature", beta}, {"l0_lambda", lambda}}));
  EXPECT_FALSE(pm->extra_loss().defined());  // eval mode
  pm->train();
  const double per_entry = 1 / (1 + std::exp(-(a0 - beta * std::log(-l / r))));
  EXPECT_NEAR(pm->extra_loss().item<double>(), lambda * 73728 * per_entry, 1e-5 * lambda * 73728);
  pm->eval();
  auto W = pm->model->state_dict().at("model.layers.1.mlp.down_proj.base_layer.weight").clone();
  {
    torch::NoGradGuard ng;
    for (auto& kv : deltas(*pm)) kv.second.fill_(2.0);
  }
  pm->merge();
  auto Wm = pm->model->state_dict().at("model.layers.1.mlp.down_proj.base_layer.weight");
  const double z = std::min(1.0, std::max(0.0, (1 / (1 + std::exp(-a0))) * (r - l) + l));
  EXPECT_NEAR((Wm - W).min().item<double>(), 2 * z, 1e-5);
  EXPECT_NEAR((Wm - W).max().item<double>(), 2 * z, 1e-5);
}

// The defaults are Guo et al. 2021's (sec. 3.2 and their code): stretch (-1.5, 1.5), no
// temperature, alpha_init 5, lambda 1.25e-7, density 0.5%. So log(-l/r) = 0: each entry's
// expected-L0 term is sigmoid(alpha) = sigmoid(5), and the eval gate is clamp(3 sigmoid(5) - 1.5)
// = 1 (open). Louizos et al.'s (-0.1, 1.1, 2/3) are checked in the test above.
TEST(DiffPruning, DefaultsAreGuoEtAl) {
  auto c = method_config("diff-pruning");
  auto pm = peft_model("llama");
  pm->add_adapter("default", c);
  auto& full = pm->adapter("default").config;
  EXPECT_EQ(full["stretch_l"].get<double>(), -1.5);
  EXPECT_EQ(full["stretch_r"].get<double>(), 1.5);
  EXPECT_EQ(full["temperature"].get<double>(), 1.0);
  EXPECT_EQ(full["alpha_init"].get<double>(), 5.0);
  EXPECT_EQ(full["l0_lambda"].get<double>(), 1.25e-7);
  EXPECT_EQ(full["density"].get<double>(), 0.005);
  pm->train();
  const double want = 1.25e-7 * 73728 / (1 + std::exp(-5.0));
  EXPECT_NEAR(pm->extra_loss().item<double>(), want, 1e-5 * want);
}

// At eval / save, z * w is magnitude-pruned to round(density * numel) entries per weight.
TEST(DiffPruning, SavesTheLargestGatedEntriesOfEachWeight) {
  torch::manual_seed(11);
  auto pm = peft_model("llama");
  pm->add_adapter("default", method_config("diff-pruning", {{"density", 0.05}}));
  std::map<std::string, torch::Tensor> w;
  {
    torch::NoGradGuard ng;
    for (auto& kv : deltas(*pm)) {
      kv.second.copy_(torch::randn(kv.second.sizes()));
      w[kv.first] = kv.second.clone();
    }
  }
  auto idx = saved_indices(*pm);
  ASSERT_EQ(idx.size(), 14u);
  for (auto& kv : w) {  // alpha_init 5: every gate is 1 at eval, so the ranking is |w|'s
    const int64_t k = std::llround(0.05 * kv.second.numel());
    std::map<std::string, torch::Tensor> one = {{kv.first, kv.second.abs()}};
    EXPECT_TRUE(torch::equal(idx.at(kv.first), expected_top(one, k).at(kv.first))) << kv.first;
  }
}

TEST(SparseMethods, ConfigErrorsNameTheField) {
  expect_error_naming("fish-mask", {{"density", 0}}, "density");
  expect_error_naming("fish-mask", {{"fisher_batches", 0}}, "fisher_batches");
  expect_error_naming("child-tuning-d", {{"mode", "X"}}, "mode");
  expect_error_naming("child-tuning-f", {{"reserve_p", 1.5}}, "reserve_p");
  expect_error_naming("diff-pruning", {{"stretch_r", 0.5}}, "stretch_r");
  expect_error_naming("diff-pruning", {{"stretch_l", 0.1}}, "stretch_l");
  expect_error_naming("diff-pruning", {{"temperature", 0}}, "temperature");
  expect_error_naming("lt-sft", {{"phase1_steps", 0}}, "phase1_steps");
}

// A damaged sparse file is refused with the file and tensor named.
TEST(SparseMethods, DamagedFilesAreRefusedClearly) {
  auto pm = peft_model("llama");
  auto in = fixture_input("llama");
  pm->add_adapter("default", method_config("fish-mask", {{"density", 0.01}, {"fisher_batches", 1}}));
  pm->calibrate([&] { return pm->forward(in).loss; });
  auto dir = temp_dir("sparse_damaged");
  pm->save_adapter(dir);
  const std::string file = dir + "/adapter_model.safetensors";
  const std::string key = "base_model.model.model.layers.0.self_attn.q_proj.sparse_";
  auto good = load_safetensors(file);
  auto expect_refused = [&](TensorMap t, const std::string& what) {
    save_safetensors(file, t);
    auto pm2 = peft_model("llama");
    try {
      pm2->load_adapter(dir);
      FAIL() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  auto missing = good;
  missing.erase(key + "values");
  expect_refused(missing, "sparse_values");
  auto out_of_range = good;
  out_of_range[key + "indices"] = out_of_range[key + "indices"] + 4096;
  expect_refused(out_of_range, "out of range");
  save_safetensors(file, good);
  auto pm3 = peft_model("llama");
  pm3->load_adapter(dir);
  EXPECT_TRUE(torch::equal(logits_of(*pm3, in), logits_of(*pm, in)));
}
