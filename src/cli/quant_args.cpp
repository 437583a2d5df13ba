#include "cli/quant_args.h"

#include "cli/recipe.h"
#include "peft/error.h"

namespace peft::cli {

const std::vector<std::string>& quant_keys() {
  static const std::vector<std::string> k = {"quantize",          "double_quant",        "compute_dtype",
                                             "load_in_4bit",      "load_in_8bit",        "bnb_4bit_quant_type",
                                             "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"};
  return k;
}

namespace {
std::optional<nlohmann::json> take(nlohmann::json& r, const std::string& k) {
  if (!r.contains(k)) return std::nullopt;
  auto v = r[k];
  r.erase(k);
  if (v.is_null()) return std::nullopt;
  return v;
}
bool as_bool(const nlohmann::json& v, const std::string& k) {
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_string() && (v == "true" || v == "false")) return v == "true";
  fail("option '", k, "': expected true or false, got ", v.dump());
}
std::string as_string(const nlohmann::json& v, const std::string& k) {
  PEFT_CHECK(v.is_string(), "option '", k, "': expected a name, got ", v.dump());
  return v.get<std::string>();
}
}  // namespace

std::optional<quant::QuantConfig> pop_quant_config(nlohmann::json& r) {
  auto quantize = take(r, "quantize"), dq = take(r, "double_quant"), cd = take(r, "compute_dtype");
  auto l4 = take(r, "load_in_4bit"), l8 = take(r, "load_in_8bit"), qt = take(r, "bnb_4bit_quant_type");
  auto bdq = take(r, "bnb_4bit_use_double_quant"), bcd = take(r, "bnb_4bit_compute_dtype");
  std::optional<std::string> type;
  if (quantize) {
    std::string t = as_string(*quantize, "quantize");
    if (t != "none") type = t;
  }
  const bool in4 = l4 && as_bool(*l4, "load_in_4bit"), in8 = l8 && as_bool(*l8, "load_in_8bit");
  PEFT_CHECK(!(in4 && in8), "options 'load_in_4bit' and 'load_in_8bit' are both true; choose one");
  if (in4 || in8) {
    std::string t = in8 ? "int8" : qt ? as_string(*qt, "bnb_4bit_quant_type") : "fp4";  // transformers' default
    PEFT_CHECK(!type || *type == t, "option 'quantize' = '", *type, "' contradicts ", in8 ? "load_in_8bit" : "load_in_4bit",
               " (", t, ")");
    type = t;
  } else if (qt) {
    std::string t = as_string(*qt, "bnb_4bit_quant_type");
    PEFT_CHECK(type, "option 'bnb_4bit_quant_type' needs load_in_4bit: true (or --quantize)");
    PEFT_CHECK(*type == t, "option 'quantize' = '", *type, "' contradicts bnb_4bit_quant_type = '", t, "'");
  }
  if (!type) {
    for (auto* k : {&dq, &cd, &bdq, &bcd})
      PEFT_CHECK(!*k, "options double_quant / compute_dtype / bnb_4bit_* need --quantize nf4|fp4|int8 (or load_in_4bit / "
                      "load_in_8bit)");
    return std::nullopt;
  }
  quant::QuantConfig c;
  c.type = quant::quant_type_from_name(*type, "option 'quantize'");
  if (dq) c.double_quant = as_bool(*dq, "double_quant");
  if (bdq) {
    bool v = as_bool(*bdq, "bnb_4bit_use_double_quant");
    PEFT_CHECK(!dq || v == c.double_quant, "options 'double_quant' and 'bnb_4bit_use_double_quant' disagree");
    c.double_quant = v;
  }
  PEFT_CHECK(!(c.double_quant && c.type == quant::QuantType::Int8),
             "option 'double_quant': double quantization applies to the 4-bit types (nf4, fp4), not int8");
  if (cd) c.compute_dtype = quant::compute_dtype_from_name(as_string(*cd, "compute_dtype"), "option 'compute_dtype'");
  if (bcd) {
    auto v = quant::compute_dtype_from_name(as_string(*bcd, "bnb_4bit_compute_dtype"), "option 'bnb_4bit_compute_dtype'");
    PEFT_CHECK(!cd || v == c.compute_dtype, "options 'compute_dtype' and 'bnb_4bit_compute_dtype' disagree");
    c.compute_dtype = v;
  }
  return c;
}

std::optional<quant::QuantConfig> quant_config_from_args(const Args& a) {
  nlohmann::json r = nlohmann::json::object();
  for (auto& k : quant_keys())
    if (a.has(k)) r[k] = parse_cli_value(k, a.get(k));
  return pop_quant_config(r);
}

}  // namespace peft::cli
