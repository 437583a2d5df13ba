// The refusals of docs/CONFIG_AUDIT_ADAPTERS.md, one by one: every peft 0.13.2 config value that
// would change the math and that peft.cpp does not implement is refused with an error naming the
// field (and the file, when it comes from adapter_config.json) - never silently ignored.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using namespace peft::test;

namespace {

struct Refusal {
  std::string peft_type, field;
  nlohmann::json value;
  nlohmann::json extra = nlohmann::json::object();  // other fields the case needs
};

std::vector<Refusal> refusals() {
  const nlohmann::json ada = {{"init_r", 4}, {"target_r", 2}, {"total_step", 10}};
  return {
      {"LORA", "layer_replication", {{0, 1}, {1, 2}}},
      {"LORA", "loftq_config", {{"loftq_bits", 4}}},
      {"LORA", "init_lora_weights", "loftq"},  // without loftq_config (peft refuses it too)
      {"LORA", "loftq_config", {{"loftq_bits", 3}}, {{"init_lora_weights", "loftq"}}},
      {"LORA", "loftq_config", {{"loftq_iter", 0}}, {{"init_lora_weights", "loftq"}}},
      {"LORA", "loftq_config", {{"loftq_bits", 4}, {"bits", 4}}, {{"init_lora_weights", "loftq"}}},
      {"LORA", "init_lora_weights", "loftq", {{"loftq_config", {{"loftq_bits", 4}}}, {"use_dora", true}}},
      {"LORA", "init_lora_weights", "pissa_niter_4"},
      {"LORA", "bias", "some"},
      {"ADALORA", "rank_pattern", {{"model.layers.0.self_attn.q_proj.lora_E", {true, false, true, true}}}, ada},
      {"ADALORA", "layer_replication", {{0, 1}}, ada},
      {"ADALORA", "loftq_config", {{"loftq_bits", 4}}, ada},
      {"ADALORA", "use_dora", true, ada},
      {"ADALORA", "bias", "all", ada},
      {"LOHA", "rank_dropout", 0.1},
      {"LOHA", "module_dropout", 0.1},
      {"LOKR", "rank_dropout", 0.1},
      {"LOKR", "module_dropout", 0.1},
      {"VERA", "bias", "all"},
      {"VERA", "vera_dropout", 1.5},
      {"IA3", "feedforward_modules", {"down_proj"}, {{"target_modules", {"q_proj"}}}},
      {"PROMPT_TUNING", "prompt_tuning_init", "SAMPLE_VOCAB", {{"num_virtual_tokens", 4}}},
      {"P_TUNING", "encoder_reparameterization_type", "GRU", {{"num_virtual_tokens", 4}}},
      {"PREFIX_TUNING", "token_dim", 7, {{"num_virtual_tokens", 4}}},
  };
}

nlohmann::json config_of(const Refusal& r) {
  nlohmann::json c = r.extra;
  c["peft_type"] = r.peft_type;
  c[r.field] = r.value;
  return c;
}

}  // namespace

TEST(ConfigAudit, EveryRefusedValueErrorsNamingTheField) {
  for (auto& r : refusals()) {
    auto pm = fixture_peft_model("llama");
    auto err = error_of([&] { pm->add_adapter("default", config_of(r)); });
    EXPECT_NE(err.find("'" + r.field + "'"), std::string::npos) << r.peft_type << " " << r.field << " = " << r.value.dump()
                                                                << ": " << err;
    EXPECT_TRUE(pm->adapters().empty()) << r.peft_type << " " << r.field;
  }
}

// From a folder: the error names adapter_config.json as well.
TEST(ConfigAudit, RefusalsFromAFileNameTheFile) {
  for (auto& r : refusals()) {
    auto dir = temp_dir("audit_" + r.peft_type + "_" + r.field);
    {
      std::ofstream(dir + "/adapter_config.json") << config_of(r).dump();
      save_safetensors(dir + "/adapter_model.safetensors", {}, {{"format", "pt"}});
    }
    auto pm = fixture_peft_model("llama");
    auto err = error_of([&] { pm->load_adapter(dir); });
    EXPECT_NE(err.find("adapter_config.json"), std::string::npos) << r.peft_type << " " << r.field << ": " << err;
    EXPECT_NE(err.find("'" + r.field + "'"), std::string::npos) << r.peft_type << " " << r.field << ": " << err;
  }
}

// Fields documented as implemented change the numbers (not silently ignored): LoHa / LoKr's
// rank_pattern and alpha_pattern size and scale the matched module only.
TEST(ConfigAudit, LycorisRankAndAlphaPatternsApply) {
  for (std::string type : {"LOHA", "LOKR"}) {
    auto pm = fixture_peft_model("llama");
    pm->add_adapter("default", {{"peft_type", type},
                                {"r", 4},
                                {"target_modules", {"q_proj", "v_proj"}},
                                {"rank_pattern", {{"v_proj", 2}}}});
    for (auto& kv : pm->adapter_state_dict("default")) {
      bool v = kv.first.find("v_proj") != std::string::npos;
      if (kv.first.find("hada_w1_a") != std::string::npos) EXPECT_EQ(kv.second.size(1), v ? 2 : 4) << kv.first;
      if (kv.first.find("lokr_w2_a") != std::string::npos) EXPECT_EQ(kv.second.size(1), v ? 2 : 4) << kv.first;
    }
    // alpha_pattern: doubling alpha on v_proj doubles that module's delta.
    auto in = fixture_input("llama");
    auto a = fixture_peft_model("llama"), b = fixture_peft_model("llama");
    nlohmann::json base = {{"peft_type", type}, {"r", 4}, {"alpha", 4}, {"target_modules", {"v_proj"}}, {"init_weights", false}};
    torch::manual_seed(3);
    a->add_adapter("default", base);
    auto cfg = base;
    cfg["alpha_pattern"] = {{"v_proj", 8}};
    torch::manual_seed(3);
    b->add_adapter("default", cfg);
    auto base_logits = logits_of(*fixture_peft_model("llama"), in);
    auto da = logits_of(*a, in) - base_logits, db = logits_of(*b, in) - base_logits;
    EXPECT_GT(da.abs().max().item<double>(), 1e-4) << type;
    EXPECT_GT((db - da).abs().max().item<double>(), 1e-4) << type << ": alpha_pattern ignored";
  }
}
