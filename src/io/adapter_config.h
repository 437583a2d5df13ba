// adapter_config.json as Python peft writes it (PeftConfig.save_pretrained): read and
// type-checked, unknown fields kept (newer peft versions add fields with defaults).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace peft {

/// Reads `path` and checks the fields peft.cpp interprets: peft_type (non-empty string),
/// task_type (string or null), sizes such as r / num_virtual_tokens (integers in [0, 2^31)),
/// lora_alpha / alpha / dropouts (numbers), target_modules / modules_to_save /
/// feedforward_modules (string, list of strings or null), rank_pattern / alpha_pattern
/// (objects of numbers), flags (booleans). Any violation throws peft::Error naming the file
/// and the field.
nlohmann::json read_adapter_config_file(const std::string& path);

}  // namespace peft
