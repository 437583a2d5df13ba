// Which modules an adapter targets, and what it saves about them, against Python peft 0.13.2
// (tests/fixtures/wave2): resolved target lists saved for every method (never null), peft's
// default targets per model type (GPT-2: LoRA c_attn; IA3 c_attn + mlp.c_proj, feed-forward
// mlp.c_proj), fan_in_fan_out for Conv1D targets, IA3's Conv1D merge, and 'all-linear'
// resolved exactly as peft (the output layer left out), in a recipe and on the command line.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "cli/recipe.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"
#include "tuners/wave2_util.h"

using namespace peft;
using namespace peft::test;

namespace {

nlohmann::json saved_config_of(PeftModel& pm, const std::string& tag) {
  auto dir = temp_dir(tag);
  pm.save_adapter(dir);
  return read_json(dir + "/adapter_config.json");
}

/// A peft folder of wave2 loaded on its base: logits and merged logits as peft's, and the folder
/// we save again has peft's config fields, keys and shapes.
void expect_wave2_adapter(const std::string& base, const std::string& adapter) {
  const std::string dir = wave2_path("adapters/" + base + "/" + adapter);
  auto ref = load_safetensors(dir + "/reference.safetensors");
  auto pm = wave2_peft_model(base);
  pm->load_adapter(dir);
  expect_reference_outputs(*pm, base, ref, "", adapter);
  auto tmp = temp_dir(adapter);
  pm->save_adapter(tmp);
  expect_same_config(read_json(dir + "/adapter_config.json"), read_json(tmp + "/adapter_config.json"), adapter);
  EXPECT_EQ(tensor_shapes(dir + "/adapter_model.safetensors"), tensor_shapes(tmp + "/adapter_model.safetensors"));
  pm->merge();
  expect_reference_outputs(*pm, base, ref, "merged_", adapter);
}

}  // namespace

// LoHa / LoKr used to save "target_modules": null with defaults, which Python refuses; every
// method with a target list saves the list it used (peft's default for the model type).
TEST(PeftTargets, EveryMethodSavesItsResolvedTargets) {
  for (std::string m : {"lora", "dora", "loha", "lokr", "vera", "adalora", "ia3"}) {
    auto pm = fixture_peft_model("llama");
    nlohmann::json opts = m == "adalora" ? nlohmann::json{{"init_r", 4}, {"target_r", 2}, {"total_step", 10}}
                                          : nlohmann::json::object();
    pm->add_adapter("default", method_config(m, opts));
    auto cfg = saved_config_of(*pm, "targets_" + m);
    std::set<std::string> want = m == "ia3" ? std::set<std::string>{"k_proj", "v_proj", "down_proj"}
                                            : std::set<std::string>{"q_proj", "v_proj"};
    EXPECT_EQ(name_set(cfg["target_modules"]), want) << m << ": " << cfg["target_modules"].dump();
    if (m == "ia3") EXPECT_EQ(cfg["feedforward_modules"], nlohmann::json({"down_proj"}));
    if (cfg.contains("fan_in_fan_out")) EXPECT_EQ(cfg["fan_in_fan_out"], false) << m;
  }
}

// Role names (our shorthand) are saved as the module names they stand for, so Python reads them.
TEST(PeftTargets, RoleNamesAreSavedAsModuleNames) {
  auto pm = fixture_peft_model("llama");
  pm->add_adapter("default", method_config("loha", {{"target_modules", {"attn.q", "mlp.down"}}}));
  EXPECT_EQ(saved_config_of(*pm, "roles")["target_modules"], nlohmann::json({"q_proj", "down_proj"}));
}

// peft's defaults for gpt2: LoRA on c_attn (a Conv1D: fan_in_fan_out saved true).
TEST(PeftTargets, Gpt2LoraDefaultsMatchPeft) {
  expect_wave2_adapter("gpt2", "lora_default");
  auto pm = wave2_peft_model("gpt2");
  pm->add_adapter("default", method_config("lora", {{"r", 4}, {"lora_alpha", 8}}));
  expect_targeted(*pm, {"transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"});
  auto cfg = saved_config_of(*pm, "gpt2_lora");
  EXPECT_EQ(cfg["target_modules"], nlohmann::json({"c_attn"}));
  EXPECT_EQ(cfg["fan_in_fan_out"], true);
}

// IA3: c_attn scales its output, mlp.c_proj (feed-forward) its input, as peft's defaults say.
TEST(PeftTargets, Gpt2Ia3DefaultsMatchPeft) {
  expect_wave2_adapter("gpt2", "ia3_default");
  auto pm = wave2_peft_model("gpt2");
  pm->add_adapter("default", method_config("ia3"));
  expect_targeted(*pm, {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj", "transformer.h.1.attn.c_attn",
                        "transformer.h.1.mlp.c_proj"});
  auto cfg = saved_config_of(*pm, "gpt2_ia3");
  EXPECT_EQ(name_set(cfg["target_modules"]), (std::set<std::string>{"c_attn", "mlp.c_proj"}));
  EXPECT_EQ(cfg["feedforward_modules"], nlohmann::json({"mlp.c_proj"}));
  EXPECT_EQ(cfg["fan_in_fan_out"], true);
}

// The shown GPT-2's biases are all 0, so the fixture cannot see IA3's bias scaling: with random
// biases, merged (W l^T on the [in, out] weight, b *= l for c_attn, b kept for mlp.c_proj)
// must equal the unmerged forward y = (x W + b) l, y = (x l) W + b.
TEST(PeftTargets, Ia3MergeOnConv1DScalesTheBias) {
  auto pm = wave2_peft_model("gpt2");
  {
    torch::NoGradGuard ng;
    for (auto& p : pm->model->named_parameters())
      if (p.key().find("bias") != std::string::npos) p.value().copy_(0.1 * torch::randn_like(p.value()));
  }
  pm->add_adapter("default", method_config("ia3"));
  {
    torch::NoGradGuard ng;
    for (auto& t : pm->trainable_parameters()) t.copy_(1 + 0.3 * torch::randn_like(t));
  }
  auto in = wave2_input("gpt2");
  auto out = logits_of(*pm, in);
  pm->merge();
  EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-5);
  pm->unmerge();
  EXPECT_LT(max_diff(logits_of(*pm, in), out), 1e-5);
}

// 'all-linear': peft's resolved list (lm_head left out), saved as a list; peft's adapter loads
// to peft's logits.
TEST(PeftTargets, AllLinearResolvesAsPeft) {
  expect_wave2_adapter("llama", "lora_all_linear");
  auto theirs = read_json(wave2_path("adapters/llama/lora_all_linear/adapter_config.json"));
  auto pm = wave2_peft_model("llama");
  pm->add_adapter("default", method_config("lora", {{"r", 4}, {"target_modules", "all-linear"}}));
  auto cfg = saved_config_of(*pm, "all_linear");
  ASSERT_TRUE(cfg["target_modules"].is_array()) << cfg["target_modules"].dump();
  EXPECT_EQ(name_set(cfg["target_modules"]), name_set(theirs["target_modules"]));
  for (auto& path : pm->adapter("default").targeted) EXPECT_EQ(path.find("lm_head"), std::string::npos) << path;
  EXPECT_EQ(pm->adapter("default").targeted.size(), 14u);  // 7 Linears x 2 blocks
}

// On the command line, --target_modules all-linear is the shorthand string, as in a recipe.
TEST(PeftTargets, AllLinearOnTheCommandLineIsTheShorthand) {
  EXPECT_EQ(cli::parse_cli_value("target_modules", "all-linear"), nlohmann::json("all-linear"));
  EXPECT_EQ(cli::parse_cli_value("target_modules", "q_proj"), nlohmann::json({"q_proj"}));
  auto pm = wave2_peft_model("gpt2");
  pm->add_adapter("default", method_config("lora", {{"target_modules", cli::parse_cli_value("target_modules", "all-linear")}}));
  auto cfg = saved_config_of(*pm, "gpt2_all_linear");
  EXPECT_EQ(name_set(cfg["target_modules"]), (std::set<std::string>{"c_attn", "c_fc", "c_proj"}));
  EXPECT_EQ(cfg["fan_in_fan_out"], true);
}
