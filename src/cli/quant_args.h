// Quantized frozen base options shared by the subcommands that load a model (docs/QUANTIZATION.md):
//   --quantize nf4|fp4|int8 [--double_quant true] [--compute_dtype bfloat16|float32]
// or, in a recipe, transformers' BitsAndBytesConfig names: load_in_4bit, load_in_8bit,
// bnb_4bit_quant_type (default fp4, as transformers), bnb_4bit_use_double_quant,
// bnb_4bit_compute_dtype.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli/command.h"
#include "peft/quant.h"

namespace peft::cli {

/// Keys read by pop_quant_config.
const std::vector<std::string>& quant_keys();
/// Removes the quantization keys from a recipe and returns the config they ask for (nullopt:
/// none). Contradictions (two types, double quant on int8, bnb_4bit_* without a 4-bit type, an
/// unknown type or dtype) are errors naming the key.
std::optional<quant::QuantConfig> pop_quant_config(nlohmann::json& recipe);
/// The same from command-line options.
std::optional<quant::QuantConfig> quant_config_from_args(const Args& a);

}  // namespace peft::cli
