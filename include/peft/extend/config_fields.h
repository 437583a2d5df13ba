// Typed adapter configs (issue 18): a method declares its config once, as a table of fields
// (name as peft writes it, type, default, allowed values or range, help, peft's or ours), and
// the table gives the defaults (Tuner::defaults), the extension keys (Tuner::extension_keys),
// the type and range checks with errors that name the field, and the help and JSON of
// `peft methods --fields` / `--json`. Rules between fields stay in Tuner::validate.
//
//   std::vector<ConfigField> fields() const override {
//     return with_common({
//         ConfigField{"r", FieldType::Int, 8, "rank of A [r, in] and B [out, r]"}.at_least(1),
//         ConfigField{"lora_dropout", FieldType::Number, 0.0, "dropout on the adapter's input"}.in_range(0, 1),
//         ConfigField{"bias", FieldType::String, "none", "which biases train"}.one_of({"none", "all", "lora_only"}),
//         ConfigField{"lora_fa", FieldType::Bool, false, "freeze A (LoRA-FA)"}.extension(),
//     }, {"target_modules", "modules_to_save", ...});
//   }
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace peft {

enum class FieldType {
  Bool,
  Int,
  Number,  // integer or floating point
  String,
  Names,   // module names: a list of strings, or one string (a regex, or "all-linear")
  Ints,    // an integer or a list of integers (layers_to_transform)
  Object,  // a JSON object (rank_pattern, loftq_config)
  Any,     // checked by the tuner's validate(), or only through `one_of`
};
const char* field_type_name(FieldType t);

struct ConfigField {
  std::string name;
  FieldType type;
  // For extension fields: the value the code assumes when absent. Null for a field that is not
  // nullable: the field is required (peft's num_virtual_tokens).
  nlohmann::json default_value;
  std::string help;
  bool nullable = false;  // null is a value (as peft's Optional[...] fields)
  nlohmann::json choices = nullptr;  // an array of the allowed values, or null
  std::optional<double> min{}, max{};  // numeric bounds, inclusive unless min_open / max_open
  bool min_open = false, max_open = false;
  bool ours = false;  // not in peft's config class: kept out of adapter_config.json (peft_cpp_config.json)

  ConfigField& or_null() { nullable = true; return *this; }
  ConfigField& one_of(std::vector<nlohmann::json> values) { choices = nlohmann::json(std::move(values)); return *this; }
  ConfigField& at_least(double lo) { min = lo; return *this; }
  ConfigField& above(double lo) { min = lo, min_open = true; return *this; }
  /// (0, 1]: a density, a kept fraction.
  ConfigField& fraction() { min = 0, min_open = true, max = 1, max_open = false; return *this; }
  /// [lo, hi) (dropout probabilities and the like).
  ConfigField& in_range(double lo, double hi) { min = lo, max = hi, max_open = true; return *this; }
  ConfigField& in_closed_range(double lo, double hi) { min = lo, max = hi, max_open = false; return *this; }
  ConfigField& extension() { ours = true; return *this; }
};

/// The fields most of peft's configs share (PeftConfig's and the targeting ones), by name:
/// base_model_name_or_path, revision, task_type, inference_mode, auto_mapping, target_modules,
/// exclude_modules, layers_to_transform, layers_pattern, modules_to_save, fan_in_fan_out.
ConfigField common_field(const std::string& name);
/// `own` followed by the named common fields.
std::vector<ConfigField> with_common(std::vector<ConfigField> own, const std::vector<std::string>& common);

/// peft_type plus every field of peft's (not the extension fields) at its default.
nlohmann::json defaults_of(const std::string& peft_type, const std::vector<ConfigField>& fields);
/// Type, null, allowed values and range of every field present in `cfg`; a peft::Error naming
/// the field ("adapter config: field 'r' (LORA) must be an integer >= 1, got 0").
void check_fields(const std::string& peft_type, const std::vector<ConfigField>& fields, const nlohmann::json& cfg);
/// The table as JSON (name, type, default, nullable, choices, min, max, ours, help) for
/// `peft methods --json`.
nlohmann::json describe_fields(const std::vector<ConfigField>& fields);

}  // namespace peft
