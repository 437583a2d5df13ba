// Typed adapter configs: defaults, checks and descriptions from one field table per method
// (include/peft/extend/config_fields.h).
#include "peft/extend/config_fields.h"

#include <cmath>
#include <map>
#include <sstream>

#include "peft/error.h"

namespace peft {

const char* field_type_name(FieldType t) {
  switch (t) {
    case FieldType::Bool: return "bool";
    case FieldType::Int: return "int";
    case FieldType::Number: return "number";
    case FieldType::String: return "string";
    case FieldType::Names: return "names";
    case FieldType::Ints: return "ints";
    case FieldType::Object: return "object";
    case FieldType::Any: return "any";
  }
  return "any";
}

namespace {

const char* type_phrase(FieldType t) {
  switch (t) {
    case FieldType::Bool: return "true or false";
    case FieldType::Int: return "an integer";
    case FieldType::Number: return "a number";
    case FieldType::String: return "a string";
    case FieldType::Names: return "a list of module names or one string (a regex)";
    case FieldType::Ints: return "an integer or a list of integers";
    case FieldType::Object: return "an object";
    case FieldType::Any: return "a value";
  }
  return "a value";
}

bool has_type(FieldType t, const nlohmann::json& v) {
  auto all = [&](auto pred) {
    for (auto& e : v)
      if (!pred(e)) return false;
    return true;
  };
  switch (t) {
    case FieldType::Bool: return v.is_boolean();
    case FieldType::Int: return v.is_number_integer();
    case FieldType::Number: return v.is_number();
    case FieldType::String: return v.is_string();
    case FieldType::Names: return v.is_string() || (v.is_array() && all([](const nlohmann::json& e) { return e.is_string(); }));
    case FieldType::Ints:
      return v.is_number_integer() || (v.is_array() && all([](const nlohmann::json& e) { return e.is_number_integer(); }));
    case FieldType::Object: return v.is_object();
    case FieldType::Any: return true;
  }
  return true;
}

std::string bound_phrase(const ConfigField& f) {
  std::ostringstream os;
  if (f.min && f.max) os << " in " << (f.min_open ? "(" : "[") << *f.min << ", " << *f.max << (f.max_open ? ")" : "]");
  else if (f.min) os << (f.min_open ? " > " : " >= ") << *f.min;
  else if (f.max) os << (f.max_open ? " < " : " <= ") << *f.max;
  return os.str();
}

const std::map<std::string, ConfigField>& commons() {
  using T = FieldType;
  static const std::map<std::string, ConfigField> m = [] {
    std::map<std::string, ConfigField> c;
    auto add = [&](ConfigField f) { c.emplace(f.name, std::move(f)); };
    add(ConfigField{"base_model_name_or_path", T::String, nullptr, "the base model the adapter was made for (informational)"}.or_null());
    add(ConfigField{"revision", T::String, nullptr, "the base model's revision (informational)"}.or_null());
    add(ConfigField{"task_type", T::String, nullptr, "CAUSAL_LM, SEQ_CLS, SEQ_2_SEQ_LM, ...; null: the model's task"}.or_null());
    add(ConfigField{"inference_mode", T::Bool, false, "set by peft when saving; no effect on the math"});
    add(ConfigField{"auto_mapping", T::Any, nullptr, "peft's auto-class mapping (informational)"}.or_null());
    add(ConfigField{"target_modules", T::Names, nullptr,
                    "module-name suffixes, a regex (full match), \"all-linear\" or role names; null: the method's default roles"}
            .or_null());
    add(ConfigField{"exclude_modules", T::Names, nullptr, "modules left out (same forms as target_modules)"}.or_null());
    add(ConfigField{"layers_to_transform", T::Ints, nullptr, "only these layer indices; null: every layer"}.or_null());
    add(ConfigField{"layers_pattern", T::Names, nullptr, "the layer list's name for layers_to_transform; null: the model's"}
            .or_null());
    add(ConfigField{"modules_to_save", T::Names, nullptr, "modules trained in full and saved (e.g. a classifier head)"}.or_null());
    add(ConfigField{"fan_in_fan_out", T::Bool, false, "weights stored [in, out] (GPT-2's Conv1D); read from the model"});
    return c;
  }();
  return m;
}

}  // namespace

ConfigField common_field(const std::string& name) {
  auto it = commons().find(name);
  PEFT_CHECK(it != commons().end(), "common_field: no common config field '", name, "'");
  return it->second;
}

std::vector<ConfigField> with_common(std::vector<ConfigField> own, const std::vector<std::string>& common) {
  for (auto& n : common) own.push_back(common_field(n));
  return own;
}

nlohmann::json defaults_of(const std::string& peft_type, const std::vector<ConfigField>& fields) {
  nlohmann::json d = nlohmann::json::object();
  for (auto& f : fields)
    if (!f.ours) d[f.name] = f.default_value;
  d["peft_type"] = peft_type;
  return d;
}

void check_fields(const std::string& peft_type, const std::vector<ConfigField>& fields, const nlohmann::json& cfg) {
  for (auto& f : fields) {
    if (!cfg.contains(f.name)) continue;
    const auto& v = cfg[f.name];
    auto bad = [&](const std::string& want) {
      fail("adapter config: field '", f.name, "' (", peft_type, ") must be ", want, ", got ", v.dump());
    };
    if (v.is_null()) {
      if (f.nullable || (f.type == FieldType::Any && f.choices.is_null())) continue;
      if (f.default_value.is_null())  // no default: the user must give it
        fail("adapter config: field '", f.name, "' (", peft_type, ") is required: ", type_phrase(f.type), bound_phrase(f));
      bad(type_phrase(f.type));
    }
    if (!has_type(f.type, v)) bad(std::string(type_phrase(f.type)) + (f.nullable ? " or null" : ""));
    if (f.choices.is_array()) {
      bool ok = false;
      for (auto& c : f.choices) ok = ok || c == v;
      if (!ok) {
        std::string list;
        for (auto& c : f.choices) list += (list.empty() ? "" : ", ") + c.dump();
        bad("one of " + list);
      }
    }
    if ((f.min || f.max) && v.is_number()) {
      const double x = v.get<double>();
      const bool ok = std::isfinite(x) && (!f.min || (f.min_open ? x > *f.min : x >= *f.min)) &&
                      (!f.max || (f.max_open ? x < *f.max : x <= *f.max));
      if (!ok) bad(std::string(type_phrase(f.type)) + bound_phrase(f));
    }
  }
}

nlohmann::json describe_fields(const std::vector<ConfigField>& fields) {
  nlohmann::json out = nlohmann::json::array();
  for (auto& f : fields) {
    nlohmann::json j = {{"name", f.name}, {"type", field_type_name(f.type)}, {"default", f.default_value},
                        {"nullable", f.nullable}, {"peft", !f.ours}, {"help", f.help}};
    if (f.choices.is_array()) j["choices"] = f.choices;
    if (f.min) j[f.min_open ? "above" : "min"] = *f.min;
    if (f.max) j[f.max_open ? "below" : "max"] = *f.max;
    out.push_back(j);
  }
  return out;
}

}  // namespace peft
