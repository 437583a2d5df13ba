// Partial fine-tuning (BitFit, LN tuning, layer freezing, sparse deltas): identity at init,
// closed-form parameter counts, merge == unmerged (and unmerge restores the base), bit-exact
// save/load, finite-difference gradients in float64, clear errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "tuner_fixtures.h"

using namespace peft;
using namespace peft::test;

namespace {

void perturb(PeftModel& pm, double scale) {
  torch::NoGradGuard ng;
  for (auto& t : pm.trainable_parameters()) t.add_(torch::randn_like(t) * scale);
}

}  // namespace

struct PartialCase {
  std::string name, model, method;
  nlohmann::json options;
  int64_t expected_trainable;
  bool mergeable;
};

std::vector<PartialCase> partial_cases() {
  // llama (2 layers): q 64->64, k/v 64->32, o 64->64, gate/up 64->128, down 128->64, 3 RMSNorms [64]
  // (two per layer + final); bert_cls (2 layers, hidden 64, FFN 128): classifier copy 2*64+2.
  const int64_t outs = 64 + 32 + 32 + 64 + 128 + 128 + 64;
  const int64_t block = 64 * 64 + 2 * 32 * 64 + 64 * 64 + 2 * 128 * 64 + 64 * 128 + 2 * 64;
  const int64_t head = 2 * 64 + 2;
  // k = round(0.01 * numel) per Linear: 41, 20, 20, 41, 82, 82, 82.
  const int64_t sparse = 41 + 20 + 20 + 41 + 82 + 82 + 82;
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
  };
}

class Partial : public ::testing::TestWithParam<PartialCase> {};

TEST_P(Partial, IdentityCountMergeSaveLoad) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model);
  auto in = fixture_input(c.model);
  auto base = logits_of(*pm, in);
  auto base_weights = pm->model->state_dict();
  for (auto& kv : base_weights) kv.second = kv.second.clone();
  pm->add_adapter("default", method_config(c.method, c.options));
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
    for (auto& kv : pm->model->state_dict()) {
      std::string k = kv.first;
      auto pos = k.find(".base_layer");
      if (pos != std::string::npos) k.erase(pos, 11);
      if (base_weights.count(k)) {
        EXPECT_LT(max_diff(kv.second, base_weights.at(k)), 1e-6) << k;
      }
    }
    EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-5);
  } else {
    EXPECT_THROW(pm->merge(), Error);
  }

  auto dir = temp_dir("partial_" + c.name);
  pm->save_adapter(dir);
  auto pm2 = fixture_peft_model(c.model);
  pm2->load_adapter(dir);
  auto orig = pm->adapter_state_dict("default"), again = pm2->adapter_state_dict("default");
  ASSERT_EQ(orig.size(), again.size());
  for (auto& kv : orig) EXPECT_TRUE(torch::equal(kv.second, again.at(kv.first))) << kv.first;
  EXPECT_TRUE(torch::equal(logits_of(*pm2, in), out));
}

TEST_P(Partial, GradientsMatchFiniteDifferences) {
  auto c = GetParam();
  auto pm = fixture_peft_model(c.model, torch::kFloat64);
  pm->add_adapter("default", method_config(c.method, c.options));
  pm->to(torch::kFloat64);
  perturb(*pm, 0.1);
  auto in = fixture_input(c.model);
  auto named = pm->named_trainable_parameters();
  ASSERT_FALSE(named.empty());
  pm->forward(in).loss.backward();
  torch::NoGradGuard ng;
  for (auto& [name, p] : named) {
    ASSERT_TRUE(p.grad().defined()) << name;
    auto flat = p.view({-1});
    auto g = p.grad().view({-1});
    for (int64_t idx : {int64_t(0), flat.numel() - 1}) {
      const double h = 1e-6, orig = flat[idx].item<double>();
      flat[idx].fill_(orig + h);
      double lp = pm->forward(in).loss.item<double>();
      flat[idx].fill_(orig - h);
      double lm = pm->forward(in).loss.item<double>();
      flat[idx].fill_(orig);
      double fd = (lp - lm) / (2 * h);
      EXPECT_NEAR(g[idx].item<double>(), fd, 1e-6 + 1e-4 * std::abs(fd)) << c.name << " " << name << "[" << idx << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, Partial, ::testing::ValuesIn(partial_cases()), [](const auto& info) { return info.param.name; });

TEST(BitFit, BiasFreeModelIsRefusedClearly) {
  auto pm = fixture_peft_model("llama");
  try {
    pm->add_adapter("default", method_config("bitfit"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add_missing_biases"), std::string::npos) << e.what();
  }
}

TEST(LnTuning, PeftKeyNames) {
  auto pm = fixture_peft_model("llama");
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
  auto pm = fixture_peft_model("llama");
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
