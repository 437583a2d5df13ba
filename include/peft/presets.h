// Method presets for a fair comparison (`peft assess`): per method, the training keys that set
// its trainable budget and the learning rate of its family. The numbers and their sources are in
// src/tuners/presets.cpp and docs/ASSESSMENT.md.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace peft {

struct AssessmentPreset {
  std::string label;    // the row name ("full" for the reference row)
  std::string method;   // the `peft train --method` it runs
  nlohmann::json keys;  // extra `peft train` keys (method and training keys), learning_rate included
};

/// Name of the full fine-tuning reference row.
inline const char* kFullFineTuning = "full";

/// The preset of `name` (a method name, or kFullFineTuning) for a model of `num_layers` blocks.
/// Throws peft::Error for an unknown name.
AssessmentPreset assessment_preset(const std::string& name, int64_t num_layers);

/// The methods `--methods all` considers, in the survey's family order (additive, partial,
/// reparameterized, hybrid, unified); which of them apply to a model is decided by trying them.
std::vector<std::string> assessment_methods();

}  // namespace peft
