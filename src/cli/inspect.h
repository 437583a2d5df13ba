// What `peft inspect` reports, as JSON (also used by tests in-process).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace peft::cli {

/// kind ("model" | "adapter" | "safetensors"), path, config fields, tensors [{name, dtype,
/// shape, numel}], num_parameters, num_bytes; models add format / model_type / architecture,
/// adapters peft_type and metadata. Errors (peft::Error) name the file.
nlohmann::ordered_json inspect(const std::string& path);

}  // namespace peft::cli
