#include "models/config_fields.h"

#include "peft/error.h"
#include "peft/module.h"
#include "peft/quant.h"

namespace peft {

void refuse_field(const nlohmann::json& c, const std::string& key, const std::function<bool(const nlohmann::json&)>& bad,
                  const std::string& why) {
  if (!c.is_object() || !c.contains(key) || c[key].is_null()) return;
  if (bad(c[key])) fail("config.json: field '", key, "' = ", c[key].dump(), ": ", why);
}

void refuse_unless(const nlohmann::json& c, const std::string& key, const nlohmann::json& expected, const std::string& why) {
  refuse_field(
      c, key,
      [&](const nlohmann::json& v) {
        if (v.is_number() && expected.is_number()) return v.get<double>() != expected.get<double>();
        return v != expected;
      },
      why);
}

void refuse_common_fields(const nlohmann::json& c) {
  refuse_field(
      c, "pruned_heads", [](const nlohmann::json& v) { return !(v.is_object() && v.empty()); },
      "pruned attention heads are not supported (the checkpoint's projections would have other shapes)");
  // bitsandbytes 4-bit (nf4/fp4) and 8-bit checkpoints load as QuantLinear (models/quant_linear.h);
  // any other quantization method or an unsupported bitsandbytes option is refused, naming the field.
  if (c.is_object() && c.contains("quantization_config") && !c["quantization_config"].is_null())
    quant::QuantConfig::from_json(c["quantization_config"], "config.json");
}

void check_activation_field(const std::string& key, const std::string& value) {
  with_context("config.json: field '" + key + "'", [&] { check_activation(value); });
}

void refuse_unsupported_problem_type(const nlohmann::json& c, int64_t num_labels) {
  refuse_field(
      c, "problem_type",
      [&](const nlohmann::json& v) {
        if (v == "regression") return num_labels != 1;
        if (v == "single_label_classification") return num_labels < 2;
        return true;
      },
      num_labels == 1 ? "a head of one label is a regressor here (problem_type 'regression')"
                      : "supported: 'regression' (num_labels 1) and 'single_label_classification' (num_labels >= 2)");
}

}  // namespace peft
