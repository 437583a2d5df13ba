// BitsAndBytesConfig as config.json's quantization_config (include/peft/quant.h).
#include "peft/error.h"
#include "peft/quant.h"

namespace peft::quant {

nlohmann::json QuantConfig::to_json() const {
  // transformers' BitsAndBytesConfig.to_dict(): its attributes plus load_in_4bit / load_in_8bit.
  nlohmann::json j;
  j["quant_method"] = "bitsandbytes";
  j["_load_in_8bit"] = !is_4bit();
  j["_load_in_4bit"] = is_4bit();
  j["llm_int8_threshold"] = int8_threshold;
  j["llm_int8_skip_modules"] = skip_modules.empty() ? nlohmann::json() : nlohmann::json(skip_modules);
  j["llm_int8_enable_fp32_cpu_offload"] = false;
  j["llm_int8_has_fp16_weight"] = false;
  j["bnb_4bit_quant_type"] = is_4bit() ? quant_type_name(type) : "fp4";
  j["bnb_4bit_use_double_quant"] = is_4bit() && double_quant;
  j["bnb_4bit_compute_dtype"] = dtype_name(compute_dtype);
  j["bnb_4bit_quant_storage"] = "uint8";
  j["load_in_4bit"] = is_4bit();
  j["load_in_8bit"] = !is_4bit();
  return j;
}

QuantConfig QuantConfig::from_json(const nlohmann::json& j, const std::string& source) {
  const std::string where = source + ": field 'quantization_config'";
  PEFT_CHECK(j.is_object(), where, ": expected an object");
  auto field = [&](const char* k) { return where + ", key '" + std::string(k) + "'"; };
  auto boolean = [&](const char* k, bool dflt) {
    if (!j.contains(k) || j[k].is_null()) return dflt;
    PEFT_CHECK(j[k].is_boolean(), field(k), ": expected true/false, got ", j[k].dump());
    return j[k].get<bool>();
  };
  auto str = [&](const char* k, const std::string& dflt) {
    if (!j.contains(k) || j[k].is_null()) return dflt;
    PEFT_CHECK(j[k].is_string(), field(k), ": expected a string, got ", j[k].dump());
    return j[k].get<std::string>();
  };
  std::string method = str("quant_method", "bitsandbytes");
  PEFT_CHECK(method == "bitsandbytes", field("quant_method"), " = '", method,
             "': only bitsandbytes checkpoints (4-bit nf4/fp4, 8-bit) are supported");
  bool b4 = boolean("load_in_4bit", boolean("_load_in_4bit", false));
  bool b8 = boolean("load_in_8bit", boolean("_load_in_8bit", false));
  PEFT_CHECK(b4 != b8, where, ": exactly one of load_in_4bit and load_in_8bit must be true");
  QuantConfig c;
  if (b4) {
    std::string t = str("bnb_4bit_quant_type", "fp4");
    PEFT_CHECK(t == "nf4" || t == "fp4", field("bnb_4bit_quant_type"), ": unknown quant type '", t, "' (nf4, fp4)");
    c.type = quant_type_from_name(t);
    c.double_quant = boolean("bnb_4bit_use_double_quant", false);
  } else {
    c.type = QuantType::Int8;
    PEFT_CHECK(!boolean("llm_int8_has_fp16_weight", false), field("llm_int8_has_fp16_weight"),
               " = true: 16-bit main weights are not supported (the checkpoint's weights must be int8)");
  }
  if (j.contains("bnb_4bit_compute_dtype") && !j["bnb_4bit_compute_dtype"].is_null()) {
    PEFT_CHECK(j["bnb_4bit_compute_dtype"].is_string(), field("bnb_4bit_compute_dtype"), ": expected a dtype name");
    c.compute_dtype = compute_dtype_from_name(j["bnb_4bit_compute_dtype"].get<std::string>(), field("bnb_4bit_compute_dtype"));
  }
  if (j.contains("bnb_4bit_quant_storage") && !j["bnb_4bit_quant_storage"].is_null())
    PEFT_CHECK(j["bnb_4bit_quant_storage"] == "uint8", field("bnb_4bit_quant_storage"), " = ",
               j["bnb_4bit_quant_storage"].dump(), ": only uint8 storage is supported");
  if (j.contains("llm_int8_skip_modules") && !j["llm_int8_skip_modules"].is_null()) {
    PEFT_CHECK(j["llm_int8_skip_modules"].is_array(), field("llm_int8_skip_modules"), ": expected a list of names");
    for (auto& s : j["llm_int8_skip_modules"]) {
      PEFT_CHECK(s.is_string(), field("llm_int8_skip_modules"), ": expected a list of names");
      c.skip_modules.push_back(s.get<std::string>());
    }
  }
  if (j.contains("llm_int8_threshold") && j["llm_int8_threshold"].is_number())
    c.int8_threshold = j["llm_int8_threshold"].get<double>();
  boolean("llm_int8_enable_fp32_cpu_offload", false);  // checked for type; device placement only, no math
  return c;
}

}  // namespace peft::quant
