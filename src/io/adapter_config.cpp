#include "io/adapter_config.h"

#include "peft/error.h"
#include "peft/io.h"

namespace peft {

nlohmann::json read_adapter_config_file(const std::string& path) {
  nlohmann::json c = read_json(path);
  PEFT_CHECK(c.is_object(), path, ": not a JSON object");
  auto field = [&](const char* k) { return path + ": field '" + k + "'"; };
  auto present = [&](const char* k) { return c.contains(k) && !c[k].is_null(); };
  PEFT_CHECK(c.contains("peft_type") && c["peft_type"].is_string() && !c["peft_type"].get<std::string>().empty(),
             field("peft_type"), ": missing or not a non-empty string");
  if (present("task_type")) PEFT_CHECK(c["task_type"].is_string(), field("task_type"), ": must be a string or null");
  for (const char* k : {"r", "init_r", "target_r", "num_virtual_tokens", "token_dim", "num_layers",
                        "num_attention_heads", "num_transformer_submodules", "encoder_hidden_size"}) {
    if (!present(k)) continue;
    const auto& v = c[k];
    PEFT_CHECK(v.is_number_integer() && (v.is_number_unsigned() || v.get<int64_t>() >= 0) &&
                   v.get<uint64_t>() < (1ull << 31),
               field(k), ": must be an integer in [0, 2^31), got ", v.dump());
  }
  for (const char* k : {"lora_alpha", "alpha", "lora_dropout", "module_dropout", "rank_dropout"})
    if (present(k)) PEFT_CHECK(c[k].is_number(), field(k), ": must be a number, got ", c[k].dump());
  for (const char* k : {"target_modules", "modules_to_save", "feedforward_modules", "exclude_modules"}) {
    if (!present(k) || c[k].is_string()) continue;
    PEFT_CHECK(c[k].is_array(), field(k), ": must be a string, a list of strings or null");
    for (const auto& s : c[k]) PEFT_CHECK(s.is_string(), field(k), ": list entries must be strings, got ", s.dump());
  }
  for (const char* k : {"rank_pattern", "alpha_pattern"}) {
    if (!present(k)) continue;
    PEFT_CHECK(c[k].is_object(), field(k), ": must be an object");
    for (const auto& [name, v] : c[k].items())
      PEFT_CHECK(v.is_number(), field(k), "['", name, "']: must be a number");
  }
  for (const char* k : {"use_rslora", "use_dora", "inference_mode", "fan_in_fan_out", "prefix_projection"})
    if (present(k)) PEFT_CHECK(c[k].is_boolean(), field(k), ": must be true/false, got ", c[k].dump());
  return c;
}

}  // namespace peft
