// Refusals of config.json values that change the math and that peft.cpp does not implement
// (docs/CONFIG_AUDIT_MODELS.md lists every field of transformers 4.37's config classes of the
// supported families with its status). Errors name the field and the value:
//   config.json: field 'rope_scaling' = {"type":"dynamic"}: <why>
// (load_model prefixes the path of the config.json).
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace peft {

/// Fails when `key` is present, not null, and `bad(value)`.
void refuse_field(const nlohmann::json& c, const std::string& key, const std::function<bool(const nlohmann::json&)>& bad,
                  const std::string& why);
/// Fails when `key` is present, not null, and differs from `expected` (JSON equality; numbers
/// compare by value).
void refuse_unless(const nlohmann::json& c, const std::string& key, const nlohmann::json& expected, const std::string& why);

/// PretrainedConfig fields that would change the math of every family: pruned_heads (not
/// empty) and quantization_config. (is_decoder / add_cross_attention matter to BERT / RoBERTa /
/// GPT-2 only: their family files refuse them.)
void refuse_common_fields(const nlohmann::json& c);

/// The activation named by config field `key` (hidden_act, activation_function, dense_act_fn):
/// refused with the field named when peft::Activation does not know it.
void check_activation_field(const std::string& key, const std::string& value);

/// Sequence classification heads of the decoder families compute transformers' regression (MSE,
/// num_labels 1) or single-label cross-entropy: other problem_type values are refused.
void refuse_unsupported_problem_type(const nlohmann::json& c, int64_t num_labels);

}  // namespace peft
