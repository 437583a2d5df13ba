// Every value docs/CONFIG_AUDIT_MODELS.md lists as refused, written into a copy of a fixture's
// config.json: loading the folder fails with an error naming the file and the field. The
// unmodified copies load (so each refusal is the field's doing).
#include <gtest/gtest.h>

#include <filesystem>

#include "peft/io.h"
#include "peft/model.h"
#include "test_util.h"

using namespace peft;
using nlohmann::json;

namespace {

struct Refused {
  std::string fixture;  // under tests/fixtures
  std::string field;
  json value;
  std::vector<std::string> erase = {};  // fields removed first (explicit values that would win)
};

std::vector<Refused> refused() {
  const std::string llama = "wave2/models/llama", mistral = "wave2/models/mistral", qwen2 = "wave2/models/qwen2",
                    gpt2 = "wave2/models/gpt2", bert = "hf/models/bert_cls", roberta = "wave2/models/roberta_reg",
                    t5 = "wave2/models/t5";
  std::vector<Refused> r = {
      {llama, "rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}},
      {llama, "rope_scaling", {{"type", "yarn"}, {"factor", 4.0}}},
      {llama, "hidden_act", "bogus_act"},
      {llama, "problem_type", "multi_label_classification"},
      {mistral, "rope_scaling", {{"type", "linear"}, {"factor", 2.0}}},
      {mistral, "attention_bias", true},
      {mistral, "mlp_bias", true},
      {mistral, "sliding_window", 0},
      {qwen2, "rope_scaling", {{"type", "linear"}, {"factor", 2.0}}},
      {qwen2, "attention_bias", false},
      {qwen2, "mlp_bias", true},
      {qwen2, "sliding_window", -4},
      {gpt2, "activation_function", "bogus_act"},
      {gpt2, "reorder_and_upcast_attn", true},
      {gpt2, "problem_type", "multi_label_classification"},
      {bert, "position_embedding_type", "relative_key"},
      {bert, "hidden_act", "bogus_act"},
      {bert, "is_decoder", true},
      {roberta, "position_embedding_type", "relative_key_query"},
      {roberta, "is_decoder", true},
      {t5, "feed_forward_proj", "gated-bogus", {"dense_act_fn", "is_gated_act"}},
      {t5, "dense_act_fn", "bogus_act"},
      {gpt2, "add_cross_attention", true},
      {bert, "add_cross_attention", true},
      {roberta, "add_cross_attention", true},
  };
  // Shared by every family (PretrainedConfig).
  for (const auto& f : {llama, mistral, qwen2, gpt2, bert, roberta, t5}) {
    r.push_back({f, "pruned_heads", {{"0", {1}}}});
    // bitsandbytes 4/8-bit loads (tests/quant); other methods and unsupported options are refused.
    r.push_back({f, "quantization_config", {{"quant_method", "gptq"}, {"bits", 4}}});
    r.push_back({f, "quantization_config", {{"quant_method", "bitsandbytes"}, {"load_in_8bit", true}, {"llm_int8_has_fp16_weight", true}}});
  }
  return r;
}

std::string copy_with(const Refused& c, const std::string& tag) {
  auto dir = test::temp_dir(tag);
  auto cfg = read_json(test::source_path("tests/fixtures/" + c.fixture + "/config.json"));
  for (auto& k : c.erase) cfg.erase(k);
  if (!c.value.is_null()) cfg[c.field] = c.value;
  write_json(dir + "/config.json", cfg);
  return dir;
}

LoadOptions no_weights() {
  LoadOptions o;
  o.load_weights = false;
  return o;
}
}  // namespace

class ConfigAudit : public ::testing::TestWithParam<Refused> {};

TEST_P(ConfigAudit, RefusedValueNamesFileAndField) {
  const auto& c = GetParam();
  // The untouched config loads.
  Refused plain = c;
  plain.value = nullptr;
  EXPECT_NO_THROW(load_model(copy_with(plain, "audit_ok"), no_weights())) << c.fixture;
  auto dir = copy_with(c, "audit_bad");
  try {
    load_model(dir, no_weights());
    FAIL() << c.fixture << ": " << c.field << " = " << c.value.dump() << " was accepted";
  } catch (const peft::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(dir + "/config.json"), std::string::npos) << m;
    EXPECT_NE(m.find("'" + c.field + "'"), std::string::npos) << m;
  }
}

INSTANTIATE_TEST_SUITE_P(All, ConfigAudit, ::testing::ValuesIn(refused()), [](const auto& info) {
  std::string n = std::to_string(info.index) + "_" + std::filesystem::path(info.param.fixture).filename().string() + "_" +
                  info.param.field;
  for (auto& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
});

// Implemented values the audit names: every activation of transformers 4.37's ACT2FN loads.
TEST(ConfigAudit, EveryAct2FnActivationLoads) {
  for (const char* act : {"gelu", "gelu_10", "gelu_fast", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_accurate",
                          "laplace", "leaky_relu", "linear", "mish", "quick_gelu", "relu", "relu2", "relu6", "sigmoid",
                          "silu", "swish", "tanh"}) {
    auto cfg = read_json(test::source_path("tests/fixtures/wave2/models/llama/config.json"));
    cfg["hidden_act"] = act;
    EXPECT_NO_THROW(create_model(cfg)) << act;
  }
}
