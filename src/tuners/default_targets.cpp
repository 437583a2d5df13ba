// Default target modules per (method, model_type), from peft 0.13.2's mappings (see the header).
#include "tuners/default_targets.h"

#include <map>

namespace peft {
namespace {

using Table = std::map<std::string, std::vector<std::string>>;

// LoRA's table; peft 0.13.2 uses it for LoRA, LoHa, LoKr and VeRA.
const Table& lora_table() {
  static const Table t = {
      {"t5", {"q", "v"}},          {"gpt2", {"c_attn"}},           {"bert", {"query", "value"}},
      {"roberta", {"query", "value"}}, {"llama", {"q_proj", "v_proj"}}, {"mistral", {"q_proj", "v_proj"}},
      {"qwen2", {"q_proj", "v_proj"}},
  };
  return t;
}
const Table& adalora_table() {
  static const Table t = {
      {"t5", {"q", "k", "v", "o", "wi", "wo"}}, {"gpt2", {"c_attn"}}, {"bert", {"query", "value"}},
      {"roberta", {"query", "key", "value", "dense"}}, {"llama", {"q_proj", "v_proj"}},
  };
  return t;
}
const Table& ia3_table() {
  static const Table t = {
      {"t5", {"k", "v", "wo"}},          {"gpt2", {"c_attn", "mlp.c_proj"}},
      {"bert", {"key", "value", "output.dense"}}, {"roberta", {"key", "value", "output.dense"}},
      {"llama", {"k_proj", "v_proj", "down_proj"}}, {"mistral", {"k_proj", "v_proj", "down_proj"}},
  };
  return t;
}
const Table& ia3_feedforward_table() {
  static const Table t = {
      {"t5", {"wo"}},           {"gpt2", {"mlp.c_proj"}},  {"bert", {"output.dense"}},
      {"roberta", {"output.dense"}}, {"llama", {"down_proj"}}, {"mistral", {"down_proj"}},
  };
  return t;
}

nlohmann::json lookup(const Table& t, const std::string& model_type) {
  auto it = t.find(model_type);
  return it == t.end() ? nlohmann::json() : nlohmann::json(it->second);
}

}  // namespace

nlohmann::json peft_default_targets(const std::string& peft_type, const std::string& model_type) {
  if (peft_type == "LORA" || peft_type == "LOHA" || peft_type == "LOKR" || peft_type == "VERA")
    return lookup(lora_table(), model_type);
  if (peft_type == "ADALORA") return lookup(adalora_table(), model_type);
  if (peft_type == "IA3") return lookup(ia3_table(), model_type);
  return nullptr;
}

nlohmann::json peft_default_feedforward(const std::string& model_type) { return lookup(ia3_feedforward_table(), model_type); }

}  // namespace peft
