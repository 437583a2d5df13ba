// transformers' state-dict layout of bitsandbytes Linear4bit / Linear8bitLt (include/peft/quant.h).
#include <torch/torch.h>

#include <cstring>
#include <iomanip>
#include <sstream>

#include "peft/error.h"
#include "peft/quant.h"

namespace peft::quant {
namespace {

const std::string kQsPrefix = ".quant_state.bitsandbytes__";

torch::ScalarType dtype_from_torch_name(const std::string& s, const std::string& what) {
  if (s == "float32" || s == "float") return torch::kFloat32;
  if (s == "bfloat16") return torch::kBFloat16;
  if (s == "float16" || s == "half") return torch::kFloat16;
  fail(what, ": unsupported dtype '", s, "' (float32, bfloat16, float16)");
}

// Python's json.dumps separators (", " and ": ") in bitsandbytes' key order.
std::string quant_state_json(const Quant4bit& q) {
  std::ostringstream o;
  o << "{\"quant_type\": \"" << quant_type_name(q.type) << "\", \"blocksize\": " << q.blocksize << ", \"dtype\": \""
    << dtype_name(q.dtype) << "\", \"shape\": [";
  for (size_t i = 0; i < q.shape.size(); ++i) o << (i ? ", " : "") << q.shape[i];
  o << "]";
  if (q.nested) {
    nlohmann::json off = q.offset;  // shortest round-trip form of the double
    o << ", \"nested_blocksize\": " << q.nested_blocksize << ", \"nested_dtype\": \"" << dtype_name(q.nested_dtype)
      << "\", \"nested_offset\": " << off.dump();
  }
  o << "}";
  return o.str();
}

const torch::Tensor* find_tensor(const TensorMap& w, const std::string& k) {
  auto it = w.find(k);
  return it == w.end() ? nullptr : &it->second;
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

}  // namespace

void write_4bit(const Quant4bit& q, const std::string& key, TensorMap* out) {
  auto cpu = q.to(torch::kCPU);
  (*out)[key] = cpu.packed;
  (*out)[key + ".absmax"] = cpu.absmax;
  (*out)[key + ".quant_map"] = cpu.code;
  if (q.nested) {
    (*out)[key + ".nested_absmax"] = cpu.nested_absmax;
    (*out)[key + ".nested_quant_map"] = cpu.nested_code.clone();
  }
  std::string js = quant_state_json(q);
  auto bytes = torch::empty({static_cast<int64_t>(js.size())}, torch::kUInt8);
  std::memcpy(bytes.data_ptr<uint8_t>(), js.data(), js.size());
  (*out)[key + kQsPrefix + quant_type_name(q.type)] = bytes;
}

std::vector<std::string> keys_4bit(const TensorMap& w, const std::string& key) {
  std::vector<std::string> out;
  for (const char* s : {"", ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"})
    if (w.count(key + s)) out.push_back(key + s);
  for (auto it = w.lower_bound(key + ".quant_state."); it != w.end() && starts_with(it->first, key + ".quant_state."); ++it)
    out.push_back(it->first);
  return out;
}

bool has_4bit(const TensorMap& w, const std::string& key) {
  if (w.count(key + ".absmax") || w.count(key + ".quant_map")) return true;
  auto it = w.lower_bound(key + ".quant_state.");
  return it != w.end() && starts_with(it->first, key + ".quant_state.");
}

Quant4bit read_4bit(const TensorMap& w, const std::string& key, const std::string& source) {
  const std::string where = source + ": tensor '" + key + "'";
  std::vector<std::string> qs;
  for (auto it = w.lower_bound(key + ".quant_state."); it != w.end() && starts_with(it->first, key + ".quant_state."); ++it)
    qs.push_back(it->first);
  PEFT_CHECK(!qs.empty(), where, ": 4-bit constants present but no '", key, kQsPrefix,
             "nf4' (or fp4) quant_state tensor (bitsandbytes' QuantState.as_dict(packed=True))");
  PEFT_CHECK(qs.size() == 1, where, ": ", qs.size(), " quant_state tensors, expected exactly one");
  const std::string& qk = qs[0];
  PEFT_CHECK(starts_with(qk, key + kQsPrefix), source, ": tensor '", qk,
             "': unknown quant_state key (expected '", key, kQsPrefix, "nf4' or 'fp4')");
  const std::string suffix = qk.substr(key.size() + kQsPrefix.size());
  PEFT_CHECK(suffix == "nf4" || suffix == "fp4", source, ": tensor '", qk, "': unknown quant type '", suffix,
             "' (supported: nf4, fp4)");
  auto bytes = w.at(qk).to(torch::kCPU).contiguous();
  PEFT_CHECK(bytes.scalar_type() == torch::kUInt8 && bytes.dim() == 1, source, ": tensor '", qk,
             "' must be a 1-D uint8 tensor of JSON bytes");
  std::string text(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), bytes.numel());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    fail(source, ": tensor '", qk, "': not valid JSON (", e.what(), ")");
  }
  const std::string qwhere = source + ": tensor '" + qk + "'";
  PEFT_CHECK(j.is_object(), qwhere, ": expected a JSON object");
  auto get = [&](const char* k) -> const nlohmann::json& {
    PEFT_CHECK(j.contains(k) && !j[k].is_null(), qwhere, ": field '", k, "' missing");
    return j[k];
  };
  Quant4bit q;
  PEFT_CHECK(get("quant_type").is_string(), qwhere, ": field 'quant_type' must be a string");
  const std::string qt = j["quant_type"].get<std::string>();
  PEFT_CHECK(qt == "nf4" || qt == "fp4", qwhere, ": field 'quant_type': unknown quant type '", qt,
             "' (supported: nf4, fp4)");
  PEFT_CHECK(qt == suffix, qwhere, ": field 'quant_type' = '", qt, "' disagrees with the key's '", suffix, "'");
  q.type = quant_type_from_name(qt);
  PEFT_CHECK(get("blocksize").is_number_integer(), qwhere, ": field 'blocksize' must be an integer");
  q.blocksize = j["blocksize"].get<int64_t>();
  PEFT_CHECK(get("dtype").is_string(), qwhere, ": field 'dtype' must be a string");
  q.dtype = dtype_from_torch_name(j["dtype"].get<std::string>(), qwhere + ": field 'dtype'");
  PEFT_CHECK(get("shape").is_array(), qwhere, ": field 'shape' must be a list of sizes");
  int64_t total = 1;
  for (auto& s : j["shape"]) {
    PEFT_CHECK(s.is_number_integer() && s.get<int64_t>() > 0, qwhere, ": field 'shape' must hold positive integers");
    PEFT_CHECK(s.get<int64_t>() <= (int64_t(1) << 48) / total, qwhere, ": field 'shape' is implausibly large");
    total *= s.get<int64_t>();
    q.shape.push_back(s.get<int64_t>());
  }
  auto tensor = [&](const std::string& k) {
    auto* t = find_tensor(w, k);
    PEFT_CHECK(t, source, ": tensor '", k, "' missing (needed by '", qk, "')");
    return t->to(torch::kCPU);
  };
  q.packed = tensor(key);
  q.absmax = tensor(key + ".absmax");
  q.code = tensor(key + ".quant_map").to(torch::kFloat32);
  q.nested = w.count(key + ".nested_absmax") > 0;
  if (q.nested) {
    q.nested_absmax = tensor(key + ".nested_absmax").to(torch::kFloat32);
    q.nested_code = tensor(key + ".nested_quant_map").to(torch::kFloat32);
    PEFT_CHECK(get("nested_blocksize").is_number_integer(), qwhere, ": field 'nested_blocksize' must be an integer");
    q.nested_blocksize = j["nested_blocksize"].get<int64_t>();
    PEFT_CHECK(get("nested_offset").is_number(), qwhere, ": field 'nested_offset' must be a number");
    q.offset = j["nested_offset"].get<double>();
    if (j.contains("nested_dtype") && j["nested_dtype"].is_string())
      q.nested_dtype = dtype_from_torch_name(j["nested_dtype"].get<std::string>(), qwhere + ": field 'nested_dtype'");
  } else {
    PEFT_CHECK(!w.count(key + ".nested_quant_map"), source, ": tensor '", key,
               ".nested_quant_map' present without '", key, ".nested_absmax'");
  }
  q.validate(where);
  return q;
}

void write_int8(const QuantInt8& q, const std::string& prefix, TensorMap* out) {
  (*out)[prefix + ".weight"] = q.CB.to(torch::kCPU);
  (*out)[prefix + ".SCB"] = q.SCB.to(torch::kCPU, torch::kFloat32);
  (*out)[prefix + ".weight_format"] = torch::zeros({}, torch::kUInt8);  // 0 = "row"
}

bool has_int8(const TensorMap& w, const std::string& prefix) { return w.count(prefix + ".SCB") > 0; }

std::vector<std::string> keys_int8(const TensorMap& w, const std::string& prefix) {
  std::vector<std::string> out;
  for (const char* s : {".weight", ".SCB", ".weight_format"})
    if (w.count(prefix + s)) out.push_back(prefix + s);
  return out;
}

QuantInt8 read_int8(const TensorMap& w, const std::string& prefix, const std::string& source) {
  auto* cb = find_tensor(w, prefix + ".weight");
  auto* scb = find_tensor(w, prefix + ".SCB");
  PEFT_CHECK(cb, source, ": tensor '", prefix, ".weight' missing (needed by '", prefix, ".SCB')");
  PEFT_CHECK(scb, source, ": tensor '", prefix, ".SCB' missing (an int8 weight needs its row scales)");
  if (auto* f = find_tensor(w, prefix + ".weight_format")) {
    PEFT_CHECK(f->numel() == 1, source, ": tensor '", prefix, ".weight_format' must be a scalar");
    int64_t v = f->to(torch::kLong).item<int64_t>();
    PEFT_CHECK(v == 0, source, ": tensor '", prefix, ".weight_format' = ", v,
               ": only the row-major layout (0, \"row\") is supported (col32 / col_turing / col_ampere are GPU tile "
               "layouts)");
  }
  QuantInt8 q;
  q.CB = cb->to(torch::kCPU);
  q.SCB = scb->to(torch::kCPU, torch::kFloat32);
  q.validate(source + ": tensor '" + prefix + ".weight'");
  return q;
}

}  // namespace peft::quant
