// Python peft's default target modules per model_type: the data of peft 0.13.2's
// TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING (peft/utils/constants.py), for the model types
// this project loads. Used when an adapter config leaves target_modules (IA3: also
// feedforward_modules) null; a model type or method without an entry falls back to the tuner's
// default_roles(). Data only: no tuner names a model family in its logic.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace peft {

/// peft's default target_modules of `peft_type` ("LORA", "IA3", ...) for `model_type`
/// (config.json's), as a list of name suffixes; null when peft has none.
nlohmann::json peft_default_targets(const std::string& peft_type, const std::string& model_type);
/// peft's default IA3 feedforward_modules for `model_type`; null when peft has none.
nlohmann::json peft_default_feedforward(const std::string& model_type);

}  // namespace peft

namespace peft {
class PretrainedModel;
/// peft's 'all-linear' shorthand resolved on `model` (see tuner.cpp).
nlohmann::json all_linear_targets(const PretrainedModel& model);
/// The target_modules an adapter config selects on `model`, as it is saved: peft's default list
/// (or the tuner's default roles) when null, 'all-linear' resolved, role names translated;
/// null when the config has none and the tuner has no defaults.
nlohmann::json resolved_target_modules(const nlohmann::json& cfg, const PretrainedModel& model,
                                       const std::vector<std::string>& default_roles);
}  // namespace peft
