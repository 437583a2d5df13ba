// Hybrid and unified methods (issue 5): COMPOSITE (components under one adapter name, S4 layer
// groups), UniPELT (gated LoRA + gated adapter + prefix), ProPETL (a shared prototype LoRA or
// bottleneck adapter with per-layer binary masks) and AdaMix (a mixture of adapter copies, and its
// export as the averaged bottleneck adapter; its consistency regulariser against two explicit
// forwards). Properties per case:
// identity at init where promised, closed-form trainable count, merge == unmerged where
// mergeable (else a clear error), save -> load bit-exact, float64 finite-difference gradients.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "tuner_test_util.h"
#include "tuners/export.h"

using namespace peft;
using namespace peft::test;

namespace {

ModelInput llama_input() { return fixture_input("llama"); }
PeftModelPtr llama(torch::Dtype dt = torch::kFloat32) { return fixture_peft_model("llama", dt); }


// llama fixture: hidden 64, FFN 128, 2 layers, 2 kv heads of 16 (v_proj 64 -> 32).
// LoRA rank r on q_proj (64 -> 64) and v_proj (64 -> 32): r (64 + 64) + r (64 + 32).
int64_t lora_qv(int64_t r) { return r * 128 + r * 96; }
// One bottleneck adapter (b = 4) on a 64-wide output: down 4*64 + 4, up 64*4 + 64.
const int64_t kAdapter = 4 * 64 + 4 + 64 * 4 + 64;
const std::string L0 = "model.layers.0.", L1 = "model.layers.1.";

nlohmann::json lora_pfeiffer() {
  return {{"peft_type", "COMPOSITE"},
          {"components",
           {{{"peft_type", "LORA"}, {"r", 4}, {"init_lora_weights", true}, {"layers_to_transform", {0}}},
            {{"peft_type", "BOTTLENECK"}, {"adapter_type", "pfeiffer"}, {"layers_to_transform", {1}}}}}};
}

}  // namespace

struct UnifiedCase {
  std::string name;
  nlohmann::json spec;  // a full config, or {"method": name, "options": {...}} (built at test time)
  int64_t expected_trainable;
  bool identity_at_init;    // false: UniPELT (random prefix)
  std::string merge_error;  // empty: mergeable; else a substring of the refusal
  nlohmann::json config() const {
    return spec.contains("method") ? method_config(spec["method"].get<std::string>(), spec.value("options", nlohmann::json::object()))
                                   : spec;
  }
};

nlohmann::json method_spec(const std::string& method, nlohmann::json options = nlohmann::json::object()) {
  return {{"method", method}, {"options", options}};
}

std::vector<UnifiedCase> unified_cases() {
  return {
      {"composite_lora_pfeiffer", lora_pfeiffer(), lora_qv(4) + kAdapter, true, "(components.1) at " + L1 + "mlp.down_proj"},
      {"composite_lora_groups",
       {{"peft_type", "COMPOSITE"},
        {"components",
         {{{"peft_type", "LORA"}, {"r", 2}, {"layers_to_transform", {0}}},
          {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 16}, {"layers_to_transform", {1}}}}}},
       lora_qv(2) + lora_qv(4), true, ""},
      // LoRA and a sequential adapter on the same down_proj: the adapter wraps the LoRA layer.
      {"composite_stacked",
       {{"peft_type", "COMPOSITE"},
        {"components",
         {{{"peft_type", "LORA"}, {"r", 4}, {"target_modules", {"down_proj"}}},
          {{"peft_type", "BOTTLENECK"}, {"adapter_type", "pfeiffer"}}}}},
       2 * (4 * 128 + 64 * 4) + 2 * kAdapter, true, "bottleneck adapter 'default' (components.1)"},
      // S4, uniform groups of 2 layers: G1 = [0] (houlsby + lora), G2 = [], G3 = [1] (houlsby +
      // prefix + bitfit), G4 = []: houlsby (2 per layer) on both layers, LoRA r 8 on layer 0, a
      // prefix of 10 (2 layers x k, v x 32), and BitFit's zero biases on layer 1's Linears
      // (q 64 + k 32 + v 32 + o 64 + gate 128 + up 128 + down 64).
      {"s4_uniform", method_spec("s4", {{"s4_grouping", "uniform"}}), 4 * kAdapter + lora_qv(8) + 10 * 2 * 2 * 32 + 512, false,
       "changes the model input"},
      // UniPELT: gated LoRA r 8 (gate 64 + 1 per module), gated adapter (64 + 1), prefix of 10
      // with a gate (64 + 1) per layer.
      {"unipelt", method_spec("unipelt"), 2 * (lora_qv(8) + 2 * 65) + 2 * (kAdapter + 65) + 10 * 2 * 2 * 32 + 2 * 65, false,
       "changes the model input"},
      // The gates alone: both gated parts start at zero (B = 0, W_up = 0).
      {"unipelt_gates",
       {{"peft_type", "COMPOSITE"},
        {"components",
         {{{"peft_type", "LORA"}, {"lora_gate", true}}, {{"peft_type", "BOTTLENECK"}, {"adapter_type", "pfeiffer"}, {"adapter_gate", true}}}}},
       2 * (lora_qv(8) + 2 * 65) + 2 * (kAdapter + 65), true, "lora adapter 'default' (components.0)"},
      // ProPETL r 8: one prototype per module name + one score per prototype entry per layer.
      {"propetl", method_spec("propetl"), 3 * lora_qv(8), true, ""},
      // ProPETL, adapter prototype (b = 64 / 16 = 4) after each FFN output: one shared adapter
      // (down_proj in both layers) + one score per prototype weight entry per layer (2 x 512).
      {"propetl_adapter", method_spec("propetl", {{"prototype", "adapter"}}), kAdapter + 2 * (4 * 64 + 64 * 4), true,
       "propetl adapter 'default' at"},
      // AdaMix: 4 copies of the b = 4 adapter at each FFN output.
      {"adamix", method_spec("adamix"), 2 * 4 * kAdapter, true, "adamix adapter 'default' at"},
  };
}

class Unified : public ::testing::TestWithParam<UnifiedCase> {};

TEST_P(Unified, InitCountAndMerge) {
  auto c = GetParam();
  auto pm = llama();
  auto in = llama_input();
  auto base = logits_of(*pm, in);
  pm->add_adapter("default", c.config());
  auto rep = pm->trainable_report();
  EXPECT_EQ(rep.trainable, c.expected_trainable) << rep.to_string();
  if (c.identity_at_init) EXPECT_TRUE(torch::equal(logits_of(*pm, in), base)) << max_diff(logits_of(*pm, in), base);
  else EXPECT_GT(max_diff(logits_of(*pm, in), base), 1e-4);  // UniPELT: the prefix is random
  randomize(*pm, 0.2);
  auto out = logits_of(*pm, in);
  EXPECT_GT(max_diff(out, base), 1e-4);
  if (c.merge_error.empty()) {
    pm->merge();
    EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-4);
    pm->unmerge();
    EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-4);
  } else {
    auto msg = error_of([&] { pm->merge(); });
    EXPECT_NE(msg.find(c.merge_error), std::string::npos) << msg;
    EXPECT_TRUE(torch::equal(logits_of(*pm, in), out));  // nothing half merged
  }
  pm->disable_adapters();  // after merge + unmerge the base weights carry float round-off
  EXPECT_LE(max_diff(logits_of(*pm, in), base), c.merge_error.empty() ? 1e-5 : 0.0) << max_diff(logits_of(*pm, in), base);
}

TEST_P(Unified, SaveLoadBitExact) {
  auto c = GetParam();
  auto pm = llama();
  pm->add_adapter("default", c.config());
  randomize(*pm, 0.2);
  auto in = llama_input();
  auto out = logits_of(*pm, in);
  auto dir = temp_dir("unified_" + c.name);
  pm->save_adapter(dir);
  auto cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_cpp_format_version"], 1);
  EXPECT_EQ(cfg["peft_type"], c.config()["peft_type"]);
  auto pm2 = llama();
  pm2->load_adapter(dir);
  expect_same_adapter(*pm, *pm2);
  EXPECT_TRUE(torch::equal(logits_of(*pm2, in), out));
}

TEST_P(Unified, GradientsMatchFiniteDifferences) {
  auto c = GetParam();
  auto pm = llama(torch::kFloat64);
  pm->add_adapter("default", c.config());
  pm->to(torch::kFloat64);
  randomize(*pm, 0.3);
  // ProPETL's scores: the loss is piecewise constant in them, autograd gives the straight-through
  // estimate instead (checked in ProPetl.MasksSharedPrototypeAndStraightThroughScores).
  expect_gradients_match_finite_differences(*pm, llama_input(), c.name, 1,
                            [](const std::string& n) { return n.find("propetl_scores") != std::string::npos; });
}

INSTANTIATE_TEST_SUITE_P(All, Unified, ::testing::ValuesIn(unified_cases()), [](const auto& info) { return info.param.name; });

TEST(Composite, KeysNamespacedPerComponentAndConfigComplete) {
  auto pm = llama();
  pm->add_adapter("default", lora_pfeiffer());
  auto dir = temp_dir("composite_keys");
  pm->save_adapter(dir);
  auto saved = load_safetensors(dir + "/adapter_model.safetensors");
  EXPECT_EQ(saved.size(), 2u * 2 + 4u);  // LoRA A, B at q and v of layer 0; the adapter's 4 tensors
  EXPECT_TRUE(saved.count("components.0.base_model.model." + L0 + "self_attn.q_proj.lora_A.weight"));
  EXPECT_TRUE(saved.count("components.1.base_model.model." + L1 + "mlp.down_proj.adapter_up.weight"));
  for (auto& kv : saved) EXPECT_EQ(kv.first.rfind("components.", 0), 0u) << kv.first;
  auto cfg = read_json(dir + "/adapter_config.json");
  ASSERT_EQ(cfg["components"].size(), 2u);
  EXPECT_EQ(cfg["components"][0]["lora_alpha"], 8);       // LoRA's default, filled in
  EXPECT_EQ(cfg["components"][1]["reduction_factor"], 16);  // BOTTLENECK's default
  EXPECT_EQ(cfg["components"][1]["target_modules"], nlohmann::json::array({"down_proj"}));  // resolved role
  auto targeted = pm->adapter("default").targeted;
  std::sort(targeted.begin(), targeted.end());
  EXPECT_EQ(targeted, (std::vector<std::string>{L0 + "self_attn.q_proj", L0 + "self_attn.v_proj", L1 + "mlp.down_proj"}));
}

TEST(Composite, S4ExpandsIntoExplicitComponents) {
  EXPECT_EQ(s4_layer_groups(24, "spindle"), (std::vector<std::vector<int64_t>>{
                                                {0, 1, 2, 3}, {4, 5, 6, 7, 8, 9, 10, 11}, {12, 13, 14, 15, 16, 17, 18, 19}, {20, 21, 22, 23}}));
  auto sizes = [](const std::vector<std::vector<int64_t>>& g) {
    std::vector<size_t> s;
    for (auto& x : g) s.push_back(x.size());
    return s;
  };
  EXPECT_EQ(sizes(s4_layer_groups(12, "spindle")), (std::vector<size_t>{2, 4, 4, 2}));
  EXPECT_EQ(sizes(s4_layer_groups(10, "decreasing")), (std::vector<size_t>{4, 3, 2, 1}));
  EXPECT_EQ(sizes(s4_layer_groups(8, "uniform")), (std::vector<size_t>{2, 2, 2, 2}));
  EXPECT_THROW(s4_layer_groups(8, "diamond"), Error);
  // The preset is the paper's S4-model (sec. 4.4): G1 A+L, G2 A+P, G3 A+P+B, G4 P+B+L.
  auto types = [](const nlohmann::json& group) {
    std::vector<std::string> t;
    for (auto& e : group)
      t.push_back(e.is_string() ? method_config(e.get<std::string>())["peft_type"].get<std::string>()
                                : e["peft_type"].get<std::string>());
    return t;
  };
  auto preset = method_config("s4");
  EXPECT_EQ(preset["s4_grouping"], "spindle");
  using V = std::vector<std::string>;
  EXPECT_EQ(types(preset["s4_groups"][0]), (V{"BOTTLENECK", "LORA"}));
  EXPECT_EQ(types(preset["s4_groups"][1]), (V{"BOTTLENECK", "PREFIX_TUNING"}));
  EXPECT_EQ(types(preset["s4_groups"][2]), (V{"BOTTLENECK", "PREFIX_TUNING", "BITFIT"}));
  EXPECT_EQ(types(preset["s4_groups"][3]), (V{"PREFIX_TUNING", "BITFIT", "LORA"}));
  auto pm = llama();
  pm->add_adapter("default", method_config("s4", {{"s4_grouping", "uniform"}}));
  auto& cfg = pm->adapter("default").config;
  EXPECT_TRUE(cfg["s4_groups"].is_null());
  // G1 = [0]: houlsby + lora; G3 = [1]: houlsby + prefix + bitfit. One component per strategy
  // over the union of its groups' layers, BitFit and LoRA ahead of the adapter; prefix: every layer.
  ASSERT_EQ(cfg["components"].size(), 4u);
  EXPECT_EQ(cfg["components"][0]["peft_type"], "BITFIT");
  EXPECT_EQ(cfg["components"][0]["layers_to_transform"], nlohmann::json::array({1}));
  EXPECT_EQ(cfg["components"][1]["peft_type"], "LORA");
  EXPECT_EQ(cfg["components"][1]["layers_to_transform"], nlohmann::json::array({0}));
  EXPECT_EQ(cfg["components"][2]["peft_type"], "BOTTLENECK");
  EXPECT_EQ(cfg["components"][2]["layers_to_transform"], nlohmann::json::array({0, 1}));
  EXPECT_EQ(cfg["components"][3]["peft_type"], "PREFIX_TUNING");
  EXPECT_FALSE(cfg["components"][3].contains("layers_to_transform"));
  // The adapter wraps BitFit's bias on layer 1's o_proj: it reads the adapted output.
  bool seen = false;
  for (auto& [path, layer] : pm->tuner_layers())
    if (path == L1 + "self_attn.o_proj") {
      seen = true;
      EXPECT_EQ(layer->method(), "bottleneck");
      auto* inner = dynamic_cast<TunerLayer*>(layer->base_layer.get());
      ASSERT_NE(inner, nullptr);
      EXPECT_EQ(inner->method(), "bitfit");
    }
  EXPECT_TRUE(seen);
}

TEST(Composite, ErrorsNameTheComponent) {
  auto pm = llama();
  auto msg = error_of([&] {
    pm->add_adapter("a", {{"peft_type", "COMPOSITE"},
                          {"components", {{{"peft_type", "LORA"}, {"r", 2}}, {{"peft_type", "LORA"}, {"r", 4}, {"layers_to_transform", {1}}}}}});
  });
  EXPECT_NE(msg.find("components[1] (LORA)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("also targeted by components[0]"), std::string::npos) << msg;
  msg = error_of([&] { pm->add_adapter("b", {{"peft_type", "COMPOSITE"}, {"components", {{{"peft_type", "LORA"}, {"rr", 2}}}}}); });
  EXPECT_NE(msg.find("components[0] (LORA): unknown field 'rr'"), std::string::npos) << msg;
  msg = error_of([&] { pm->add_adapter("c", {{"peft_type", "COMPOSITE"}, {"components", {{{"peft_type", "LORA"}, {"r", 0}}}}}); });
  EXPECT_NE(msg.find("components[0] (LORA)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'r'"), std::string::npos) << msg;
  msg = error_of([&] { pm->add_adapter("d", {{"peft_type", "COMPOSITE"}, {"components", {lora_pfeiffer()}}}); });
  EXPECT_NE(msg.find("do not nest"), std::string::npos) << msg;
  msg = error_of([&] {
    pm->add_adapter("e", {{"peft_type", "COMPOSITE"},
                          {"components", {{{"peft_type", "PREFIX_TUNING"}, {"num_virtual_tokens", 2}},
                                          {{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 2}}}}});
  });
  EXPECT_NE(msg.find("components[1] (PROMPT_TUNING)"), std::string::npos) << msg;
  msg = error_of([&] { pm->add_adapter("f", {{"peft_type", "COMPOSITE"}}); });
  EXPECT_NE(msg.find("'components'"), std::string::npos) << msg;
  EXPECT_TRUE(pm->adapters().empty());
}

TEST(ProPetl, MasksSharedPrototypeAndStraightThroughScores) {
  auto pm = llama();
  pm->add_adapter("default", method_config("propetl", {{"mask_sparsity", 0.25}}));
  randomize(*pm, 0.2);
  auto sd = pm->adapter_state_dict("default");
  // One prototype per module name, shared by both layers.
  EXPECT_TRUE(sd.count("base_model.propetl_prototype.q_proj.lora_A.weight"));
  EXPECT_TRUE(sd.count("base_model.propetl_prototype.v_proj.lora_B.weight"));
  auto m0 = sd.at("base_model.model." + L0 + "self_attn.q_proj.propetl_mask_A");
  auto m1 = sd.at("base_model.model." + L1 + "self_attn.q_proj.propetl_mask_A");
  EXPECT_EQ(m0.scalar_type(), torch::kUInt8);
  EXPECT_EQ(m0.sum().item<int64_t>(), m0.numel() * 3 / 4);  // keeps 1 - mask_sparsity
  EXPECT_FALSE(torch::equal(m0, m1));                       // each layer its own mask
  // A mask that its scores do not give is refused at load.
  auto dir = temp_dir("propetl_bad_mask");
  pm->save_adapter(dir);
  sd = load_safetensors(dir + "/adapter_model.safetensors");
  auto key = "base_model.model." + L0 + "self_attn.q_proj.propetl_mask_A";
  sd[key] = 1 - sd[key];
  save_safetensors(dir + "/adapter_model.safetensors", sd, {{"format", "pt"}});
  auto pm2 = llama();
  auto msg = error_of([&] { pm2->load_adapter(dir); });
  EXPECT_NE(msg.find("propetl_mask_A/B do not match"), std::string::npos) << msg;
  // Straight-through: d loss / d scores = d loss / d mask = grad(W_eff) * prototype, nonzero.
  auto in = llama_input();
  pm->forward(in).loss.backward();
  for (auto& [name, p] : pm->named_trainable_parameters())
    if (name.find("propetl_scores") != std::string::npos) EXPECT_GT(p.grad().abs().sum().item<double>(), 0) << name;
}

// The adapter prototype: layer l runs the shared adapter with masked weights, shared biases
// (checked against a plain BOTTLENECK adapter holding W_p ⊙ m_l per layer); masks are saved
// per layer and each keeps 1 - mask_sparsity of its entries.
TEST(ProPetl, AdapterPrototypeIsAMaskedSharedBottleneck) {
  auto pm = llama();
  pm->add_adapter("default", method_config("propetl", {{"prototype", "adapter"}, {"mask_sparsity", 0.25}, {"bottleneck_size", 6}}));
  randomize(*pm, 0.3);
  auto sd = pm->adapter_state_dict("default");
  const std::string P = "base_model.propetl_prototype.down_proj.";
  ASSERT_TRUE(sd.count(P + "adapter_down.weight"));
  EXPECT_EQ(sd.at(P + "adapter_down.weight").sizes(), (std::vector<int64_t>{6, 64}));
  TensorMap plain;
  for (auto& Lp : {L0, L1}) {
    const std::string K = "base_model.model." + Lp + "mlp.down_proj.";
    auto md = sd.at(K + "propetl_mask_down"), mu = sd.at(K + "propetl_mask_up");
    EXPECT_EQ(md.scalar_type(), torch::kUInt8);
    EXPECT_EQ(md.sum().item<int64_t>(), 6 * 64 * 3 / 4);
    plain[K + "adapter_down.weight"] = sd.at(P + "adapter_down.weight") * md;
    plain[K + "adapter_down.bias"] = sd.at(P + "adapter_down.bias");
    plain[K + "adapter_up.weight"] = sd.at(P + "adapter_up.weight") * mu;
    plain[K + "adapter_up.bias"] = sd.at(P + "adapter_up.bias");
  }
  EXPECT_FALSE(torch::equal(sd.at("base_model.model." + L0 + "mlp.down_proj.propetl_mask_up"),
                            sd.at("base_model.model." + L1 + "mlp.down_proj.propetl_mask_up")));
  auto ref = llama();
  ref->add_adapter("default", method_config("pfeiffer", {{"bottleneck_size", 6}}));
  ref->load_adapter_state_dict("default", plain, "masked prototype");
  auto in = llama_input();
  EXPECT_LT(max_diff(logits_of(*ref, in), logits_of(*pm, in)), 1e-5);
  // Straight-through: every score tensor gets a gradient.
  pm->forward(in).loss.backward();
  for (auto& [name, p] : pm->named_trainable_parameters())
    if (name.find("propetl_scores") != std::string::npos) EXPECT_GT(p.grad().abs().sum().item<double>(), 0) << name;
  auto msg = error_of([&] { llama()->add_adapter("x", method_config("propetl", {{"prototype", "prefix"}})); });
  EXPECT_NE(msg.find("'prototype'"), std::string::npos) << msg;
}

TEST(AdaMix, StochasticInTrainingAveragedAtInference) {
  auto pm = llama();
  pm->add_adapter("default", method_config("adamix", {{"num_experts", 3}}));
  randomize(*pm, 0.3);
  auto in = llama_input();
  auto eval1 = logits_of(*pm, in), eval2 = logits_of(*pm, in);
  EXPECT_TRUE(torch::equal(eval1, eval2));
  pm->train();
  torch::manual_seed(1);
  auto draws = logits_of(*pm, in);
  bool differs = false;
  for (int i = 0; i < 8 && !differs; ++i) differs = !torch::equal(logits_of(*pm, in), draws);
  EXPECT_TRUE(differs) << "training forwards should route to random copies";
  pm->eval();
  // Inference equals one Pfeiffer adapter holding the copies' mean weights.
  auto ref = llama();
  ref->add_adapter("default", method_config("pfeiffer", {{"reduction_factor", 16}}));
  auto sd = pm->adapter_state_dict("default");
  TensorMap mean;
  for (auto& kv : sd) {
    auto k = kv.first;
    k.replace(k.find("adamix_"), 7, "adapter_");
    mean[k] = kv.second.mean(0);
  }
  ref->load_adapter_state_dict("default", mean, "averaged");
  EXPECT_LT(max_diff(logits_of(*ref, in), eval1), 1e-5);
}

// `peft export`: the AdaMix adapter written as the BOTTLENECK adapter holding the experts' mean
// weights (sec. 3.4) loads with the bottleneck tuner and gives the eval-mode logits bit for bit.
TEST(AdaMix, ExportsTheAveragedAdapterAsBottleneck) {
  auto pm = llama();
  pm->add_adapter("default", method_config("adamix", {{"num_experts", 3}, {"bottleneck_size", 5}, {"non_linearity", "gelu"}}));
  randomize(*pm, 0.3);
  auto in = llama_input();
  auto eval = logits_of(*pm, in);
  auto dir = temp_dir("adamix_export");
  pm->save_adapter(dir + "/adamix");
  std::string out;
  ASSERT_EQ(run_cli("export --adapter " + dir + "/adamix --out " + dir + "/bottleneck", &out), 0) << out;
  auto cfg = read_json(dir + "/bottleneck/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "BOTTLENECK");
  EXPECT_EQ(cfg["bottleneck_size"], 5);
  EXPECT_EQ(cfg["non_linearity"], "gelu");
  EXPECT_EQ(cfg["target_modules"], nlohmann::json::array({L0 + "mlp.down_proj", L1 + "mlp.down_proj"}));
  auto saved = load_safetensors(dir + "/bottleneck/adapter_model.safetensors");
  auto experts = pm->adapter_state_dict("default");
  const std::string k = "base_model.model." + L0 + "mlp.down_proj.";
  EXPECT_TRUE(torch::equal(saved.at(k + "adapter_up.weight"), experts.at(k + "adamix_up.weight").mean(0)));
  EXPECT_EQ(saved.size(), experts.size());
  auto ref = llama();
  ref->load_adapter(dir + "/bottleneck");
  EXPECT_TRUE(torch::equal(logits_of(*ref, in), eval)) << max_diff(logits_of(*ref, in), eval);
  // Methods without a separate inference form are refused by name.
  auto lora = llama();
  lora->add_adapter("default", method_config("lora", {{"r", 2}}));
  lora->save_adapter(dir + "/lora");
  auto msg = error_of([&] { export_adapter_dir(dir + "/lora", dir + "/lora_out"); });
  EXPECT_NE(msg.find("peft_type 'LORA' has no separate inference form"), std::string::npos) << msg;
}

// ---- AdaMix's consistency regulariser (Wang et al. 2022, sec. 3.3) -----------------------------
// References are built from two explicit forwards of the base model (the AdaMix layers inside it
// draw their routing from torch's RNG, so reseeding reproduces both draws) and the formula
//   loss(A) + w * 1/2 (KL(p_B || p_A) + KL(p_A || p_B))
// averaged over the rows the loss counts.
namespace {

/// KL(p || q) + KL(q || p) per row, from plain softmax / log.
torch::Tensor two_way_kl(const torch::Tensor& za, const torch::Tensor& zb) {
  auto pa = torch::softmax(za, -1), pb = torch::softmax(zb, -1);
  return (pa * (pa.log() - pb.log())).sum(-1) + (pb * (pb.log() - pa.log())).sum(-1);
}

struct TwoForwards {
  ModelOutput a, b;
};
TwoForwards two_forwards(PeftModel& pm, const ModelInput& in, uint64_t seed) {
  torch::manual_seed(seed);
  TwoForwards f;
  f.a = pm.model->forward(in);
  f.b = pm.model->forward(in);
  return f;
}
double loss_with_seed(PeftModel& pm, const ModelInput& in, uint64_t seed, torch::Tensor* logits = nullptr) {
  torch::manual_seed(seed);
  auto out = pm.forward(in);
  if (logits) *logits = out.logits.detach();
  return out.loss.item<double>();
}

/// Llama labels with some positions ignored: the first example's 3rd-5th tokens, the second's
/// first two (the latter's first is never predicted anyway: causal shift).
ModelInput masked_llama_input() {
  auto in = llama_input();
  in.labels.index_put_({0, torch::indexing::Slice(2, 5)}, -100);
  in.labels.index_put_({1, torch::indexing::Slice(0, 2)}, -100);
  return in;
}

}  // namespace

TEST(AdaMixConsistency, CausalLmLossIsFirstLossPlusMaskedSymmetricKl) {
  auto pm = llama();
  const double w = 2.5;
  pm->add_adapter("default", method_config("adamix", {{"num_experts", 3}, {"consistency_weight", w}}));
  randomize(*pm, 0.3);
  pm->train();
  auto in = masked_llama_input();
  torch::NoGradGuard ng;
  auto f = two_forwards(*pm, in, 11);
  ASSERT_FALSE(torch::equal(f.a.logits, f.b.logits)) << "the two routings should differ";
  // Position t predicts token t + 1: it counts where labels[:, t + 1] != -100.
  auto T = in.labels.size(1);
  auto counted = (in.labels.slice(1, 1) != -100).to(torch::kFloat32);  // [B, T-1]
  auto kl = two_way_kl(f.a.logits.slice(1, 0, T - 1), f.b.logits.slice(1, 0, T - 1));  // [B, T-1]
  double masked = (0.5 * (kl * counted).sum() / counted.sum()).item<double>();
  double everywhere = (0.5 * kl.mean()).item<double>();
  ASSERT_GT(std::abs(masked - everywhere), 1e-4) << "the mask should matter for this test to mean anything";
  double expected = f.a.loss.item<double>() + w * masked;
  torch::Tensor logits;
  double got = loss_with_seed(*pm, in, 11, &logits);
  EXPECT_NEAR(got, expected, 1e-5 * std::abs(expected));
  EXPECT_GT(got - f.a.loss.item<double>(), 1e-3);
  EXPECT_TRUE(torch::equal(logits, f.a.logits));  // the first routing's logits
}

// Seq2seq (T5): labels are not shifted; the KL is averaged over the decoder positions counted.
TEST(AdaMixConsistency, Seq2SeqKlOverLabelledDecoderPositions) {
  torch::manual_seed(23);  // the weights below: not whatever the tests before left in the generator
  auto pm = fixture_peft_model("t5");
  pm->add_adapter("default", method_config("adamix", {{"num_experts", 3}, {"consistency_weight", 3.0}}));
  randomize(*pm, 0.3);
  pm->train();
  auto in = fixture_input("t5");
  in.labels.index_put_({0, torch::indexing::Slice(1, 3)}, -100);
  torch::NoGradGuard ng;
  auto f = two_forwards(*pm, in, 17);
  auto counted = (in.labels != -100).to(torch::kFloat32);
  auto kl = two_way_kl(f.a.logits, f.b.logits);  // [B, T_dec]
  double masked = (0.5 * (kl * counted).sum() / counted.sum()).item<double>();
  ASSERT_GT(std::abs(masked - 0.5 * kl.mean().item<double>()), 1e-5);
  double expected = f.a.loss.item<double>() + 3.0 * masked;
  EXPECT_NEAR(loss_with_seed(*pm, in, 17), expected, 1e-5 * expected);
}

TEST(AdaMixConsistency, SeqClsLossAveragesTheKlOverTheBatch) {
  auto pm = fixture_peft_model("bert_cls");
  pm->add_adapter("default", method_config("adamix", {{"num_experts", 4}}));  // the preset's weight, 1
  EXPECT_EQ(pm->adapter("default").config["consistency_weight"], 1.0);
  randomize(*pm, 0.5);
  pm->train();  // BERT's dropout draws from the same RNG: reseeding reproduces it too
  auto in = fixture_input("bert_cls");
  torch::NoGradGuard ng;
  auto f = two_forwards(*pm, in, 5);
  ASSERT_EQ(f.a.logits.dim(), 2);
  ASSERT_GT(f.a.logits.size(1), 1);
  // Cross-entropy of A by hand, then the KL per example.
  auto lpa = torch::log_softmax(f.a.logits, -1);
  double ce = -lpa.gather(1, in.labels.view({-1, 1})).mean().item<double>();
  EXPECT_NEAR(f.a.loss.item<double>(), ce, 1e-6);
  double kl = 0;
  for (int64_t i = 0; i < f.a.logits.size(0); ++i) kl += two_way_kl(f.a.logits[i], f.b.logits[i]).item<double>();
  kl = 0.5 * kl / f.a.logits.size(0);
  ASSERT_GT(kl, 1e-5);
  EXPECT_NEAR(loss_with_seed(*pm, in, 5), ce + kl, 1e-5 * (ce + kl));
}

TEST(AdaMixConsistency, OffInEvalModeAndWithWeightZero) {
  auto pm = llama();
  pm->add_adapter("default", method_config("adamix", {{"num_experts", 3}}));
  randomize(*pm, 0.3);
  auto in = masked_llama_input();
  torch::NoGradGuard ng;
  // Eval: averaged weights, one deterministic forward, no regulariser.
  EXPECT_EQ(pm->forward(in).loss.item<double>(), pm->model->forward(in).loss.item<double>());
  pm->train();
  double with = loss_with_seed(*pm, in, 3);
  pm->mutable_config("default")["consistency_weight"] = 0.0;
  double without = loss_with_seed(*pm, in, 3);
  torch::manual_seed(3);
  EXPECT_EQ(without, pm->model->forward(in).loss.item<double>());
  EXPECT_GT(with - without, 1e-4);
  // No labels: no loss and no second forward (the RNG advanced by one forward's draws only).
  auto no_labels = in;
  no_labels.labels = torch::Tensor();
  pm->mutable_config("default")["consistency_weight"] = 1.0;
  torch::manual_seed(3);
  EXPECT_FALSE(pm->forward(no_labels).loss.defined());
  double next = torch::rand({1}).item<double>();
  torch::manual_seed(3);
  pm->model->forward(no_labels);
  EXPECT_EQ(torch::rand({1}).item<double>(), next);
}

// The gradient is that of loss(A) + w/2 (CE(sg p_B, z_A) + CE(sg p_A, z_B)) with the targets'
// distributions frozen (the official code's stop-gradient): checked against central differences
// of that surrogate, the routing fixed by reseeding before every evaluation.
TEST(AdaMixConsistency, GradientFollowsTheStopGradientKl) {
  auto pm = llama(torch::kFloat64);
  const double w = 1.5;
  pm->add_adapter("default", method_config("adamix", {{"num_experts", 2}, {"consistency_weight", w}}));
  pm->to(torch::kFloat64);
  randomize(*pm, 0.3);
  pm->train();
  auto in = masked_llama_input();
  const uint64_t seed = 21;
  auto T = in.labels.size(1);
  auto counted = (in.labels.slice(1, 1) != -100).to(torch::kFloat64);
  torch::Tensor pa0, pb0;  // the distributions at the unperturbed weights
  {
    torch::NoGradGuard ng;
    auto f = two_forwards(*pm, in, seed);
    pa0 = torch::softmax(f.a.logits.slice(1, 0, T - 1), -1);
    pb0 = torch::softmax(f.b.logits.slice(1, 0, T - 1), -1);
  }
  auto surrogate = [&] {
    auto f = two_forwards(*pm, in, seed);
    auto ce_ab = -(pb0 * torch::log_softmax(f.a.logits.slice(1, 0, T - 1), -1)).sum(-1);
    auto ce_ba = -(pa0 * torch::log_softmax(f.b.logits.slice(1, 0, T - 1), -1)).sum(-1);
    return (f.a.loss + w * 0.5 * ((ce_ab + ce_ba) * counted).sum() / counted.sum()).item<double>();
  };
  auto grads = [&] {
    for (auto& p : pm->trainable_parameters()) p.mutable_grad() = torch::Tensor();
    torch::manual_seed(seed);
    pm->forward(in).loss.backward();
    std::map<std::string, torch::Tensor> g;
    for (auto& [name, p] : pm->named_trainable_parameters()) g[name] = p.grad().clone();
    return g;
  };
  auto g = grads();
  pm->mutable_config("default")["consistency_weight"] = 0.0;
  auto g0 = grads();
  pm->mutable_config("default")["consistency_weight"] = w;
  torch::NoGradGuard ng;
  int checked = 0;
  for (auto& [name, p] : pm->named_trainable_parameters()) {
    auto flat = p.view({-1});
    auto gf = g.at(name).view({-1}), diff = (gf - g0.at(name).view({-1})).abs();
    if (diff.max().item<double>() < 1e-6) continue;  // an expert neither routing drew
    ++checked;
    int64_t idx = diff.argmax().item<int64_t>();  // where the KL term moves the gradient most
    const double h = 1e-6, orig = flat[idx].item<double>();
    flat[idx].fill_(orig + h);
    double lp = surrogate();
    flat[idx].fill_(orig - h);
    double lm = surrogate();
    flat[idx].fill_(orig);
    double fd = (lp - lm) / (2 * h);
    EXPECT_NEAR(gf[idx].item<double>(), fd, 1e-6 + 1e-4 * std::abs(fd)) << name << "[" << idx << "]";
    EXPECT_GT(std::abs(fd - g0.at(name).view({-1})[idx].item<double>()), 1e-5) << name << ": no KL gradient here";
  }
  EXPECT_GE(checked, 4);
}

// Prompt tuning (labels padded for the virtual tokens) and prefix tuning (a pre-filled KV cache
// the first forward extends) with AdaMix: the input adapter runs once, both routings see the
// same adapted input, the second one the pristine prefix cache.
TEST(AdaMixConsistency, SecondForwardSeesTheSameAdaptedInput) {
  for (std::string input_type : {"PROMPT_TUNING", "PREFIX_TUNING"}) {
    auto pm = llama();
    pm->add_adapter("default", {{"peft_type", "COMPOSITE"},
                                {"components", {{{"peft_type", input_type}, {"num_virtual_tokens", 3}},
                                                {{"peft_type", "ADAMIX"}, {"num_experts", 3}}}}});
    randomize(*pm, 0.3);
    pm->train();
    auto in = masked_llama_input();
    torch::NoGradGuard ng;
    torch::manual_seed(9);
    ModelInput adapted = in;
    KVCache storage;
    pm->adapter("default").input->apply(*pm->model, adapted, storage);
    KVCache s1 = storage, s2 = storage;
    ModelInput ia = adapted, ib = adapted;
    if (adapted.cache) {
      ia.cache = &s1;
      ib.cache = &s2;
    }
    auto a = pm->model->forward(ia), b = pm->model->forward(ib);
    auto labels = adapted.labels;  // prompt tuning: -100 for the virtual tokens
    auto T = labels.size(1);
    ASSERT_EQ(a.logits.size(1), T) << input_type;
    auto counted = (labels.slice(1, 1) != -100).to(torch::kFloat32);
    auto kl = two_way_kl(a.logits.slice(1, 0, T - 1), b.logits.slice(1, 0, T - 1));
    double expected = a.loss.item<double>() + 0.5 * ((kl * counted).sum() / counted.sum()).item<double>();
    EXPECT_NEAR(loss_with_seed(*pm, in, 9), expected, 1e-5 * expected) << input_type;
  }
}

TEST(AdaMixConsistency, ConfigValidatedAndSaved) {
  EXPECT_EQ(method_config("adamix")["consistency_weight"], 1.0);
  using J = nlohmann::json;
  for (J bad : {J(-0.5), J("1"), J(nullptr), J::array()}) {
    auto cfg = nlohmann::json{{"peft_type", "ADAMIX"}, {"consistency_weight", bad}};
    auto msg = error_of([&] { llama()->add_adapter("default", cfg); });
    // The field table's message: the field, the method, what it must be, what it got.
    EXPECT_NE(msg.find("field 'consistency_weight' (ADAMIX) must be a number"), std::string::npos) << msg;
    EXPECT_NE(msg.find(", got " + bad.dump()), std::string::npos) << msg;
    if (bad.is_number()) EXPECT_NE(msg.find(">= 0"), std::string::npos) << msg;
  }
  auto pm = llama();
  pm->add_adapter("default", method_config("adamix", {{"consistency_weight", 0.25}}));
  randomize(*pm, 0.3);
  auto in = llama_input();
  auto dir = expect_save_load_bit_exact(*pm, "llama", in, "adamix_consistency");
  auto cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["consistency_weight"], 0.25);
  auto pm2 = llama();
  pm2->load_adapter(dir);
  EXPECT_EQ(pm2->adapter("default").config["consistency_weight"], 0.25);
  // A file without the field (written before it existed) gets the default; a bad one names the file.
  cfg.erase("consistency_weight");
  write_json(dir + "/adapter_config.json", cfg);
  auto pm3 = llama();
  pm3->load_adapter(dir);
  EXPECT_EQ(pm3->adapter("default").config["consistency_weight"], 1.0);
  cfg["consistency_weight"] = -1;
  write_json(dir + "/adapter_config.json", cfg);
  auto msg = error_of([&] { llama()->load_adapter(dir); });
  EXPECT_NE(msg.find("adapter_config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'consistency_weight'"), std::string::npos) << msg;
}
