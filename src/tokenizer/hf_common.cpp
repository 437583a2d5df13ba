// tokenizer.json reading helpers shared by the component files (hf_internal.h): JSON field access
// whose errors name the field path, string replacement, and GPT-2's byte <-> unicode map.
#include <string>

#include "tokenizer/hf_internal.h"
#include "tokenizer/unicode.h"

namespace peft::tok::hf {

// ---------------------------------------------------------------------------------------------
// JSON access with field paths in messages.
[[noreturn]] void bad_field(const std::string& path, const std::string& what) {
  fail("field '", path, "': ", what);
}
const json& need(const json& o, const char* key, const std::string& path) {
  if (!o.is_object()) bad_field(path, std::string("expected an object, got ") + o.type_name());
  auto it = o.find(key);
  if (it == o.end()) bad_field(path + "." + key, "missing");
  return *it;
}
bool has(const json& o, const char* key) { return o.is_object() && o.contains(key) && !o[key].is_null(); }
std::string get_str(const json& o, const char* key, const std::string& path) {
  const json& v = need(o, key, path);
  if (!v.is_string()) bad_field(path + "." + key, std::string("expected a string, got ") + v.type_name());
  return v.get<std::string>();
}
std::string opt_str(const json& o, const char* key, const std::string& path, const std::string& dflt) {
  if (!has(o, key)) return dflt;
  return get_str(o, key, path);
}
bool opt_bool(const json& o, const char* key, const std::string& path, bool dflt) {
  if (!has(o, key)) return dflt;
  const json& v = o[key];
  if (!v.is_boolean()) bad_field(path + "." + key, std::string("expected a boolean, got ") + v.type_name());
  return v.get<bool>();
}
int64_t get_int(const json& v, const std::string& path) {
  if (!v.is_number_integer()) bad_field(path, std::string("expected an integer, got ") + v.type_name());
  return v.get<int64_t>();
}
int64_t opt_int(const json& o, const char* key, const std::string& path, int64_t dflt) {
  if (!has(o, key)) return dflt;
  return get_int(o[key], path + "." + key);
}
double get_num(const json& v, const std::string& path) {
  if (!v.is_number()) bad_field(path, std::string("expected a number, got ") + v.type_name());
  return v.get<double>();
}
const json& need_array(const json& o, const char* key, const std::string& path) {
  const json& v = need(o, key, path);
  if (!v.is_array()) bad_field(path + "." + key, std::string("expected an array, got ") + v.type_name());
  return v;
}
std::string type_of(const json& o, const std::string& path) { return get_str(o, "type", path); }
void check_utf8(const std::string& s, const std::string& path) {
  if (utf8_invalid_at(s) != std::string::npos) bad_field(path, "invalid UTF-8");
}
// Replace pattern: {"String": "..."}; {"Regex": ...} only when it is a plain literal.
std::string pattern_string(const json& o, const std::string& path) {
  const json& p = need(o, "pattern", path);
  if (p.is_string()) return p.get<std::string>();
  if (has(p, "String")) return get_str(p, "String", path + ".pattern");
  if (has(p, "Regex")) {
    std::string r = get_str(p, "Regex", path + ".pattern");
    if (r == " ") return r;
    bad_field(path + ".pattern.Regex", "regular expression '" + r + "' is not supported here");
  }
  bad_field(path + ".pattern", "expected {\"String\": ...}");
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  std::string out;
  size_t i = 0;
  while (true) {
    size_t k = s.find(from, i);
    if (k == std::string::npos) break;
    out.append(s, i, k - i);
    out += to;
    i = k + from.size();
  }
  out.append(s, i, std::string::npos);
  return out;
}

// ---------------------------------------------------------------------------------------------
// GPT-2 byte <-> unicode mapping.
ByteMap::ByteMap() {
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    uint32_t cp = keep ? uint32_t(b) : uint32_t(256 + n++);
    utf8_append(byte_to_str[b], cp);
    cp_to_byte[cp] = (unsigned char)b;
  }
}
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

std::string prepend_scheme(const json& j, const std::string& path) {
  if (has(j, "prepend_scheme")) {
    std::string s = get_str(j, "prepend_scheme", path);
    if (s != "always" && s != "first" && s != "never")
      bad_field(path + ".prepend_scheme", "expected always|first|never, got '" + s + "'");
    return s;
  }
  return opt_bool(j, "add_prefix_space", path, true) ? "always" : "never";
}

}  // namespace peft::tok::hf
