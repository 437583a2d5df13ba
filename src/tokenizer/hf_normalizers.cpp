// tokenizer.json "normalizer": the text of each segment -> normalized text (tokenizers'
// normalizers module: Sequence, Prepend, Replace, Lowercase, NFD/NFKD, StripAccents, Strip,
// BertNormalizer; NFC/NFKC/Precompiled as identity).
#include <string>
#include <vector>

#include "tokenizer/hf_internal.h"
#include "tokenizer/unicode.h"

namespace peft::tok::hf {
namespace {

std::string bert_normalize(const std::string& s, bool clean, bool chinese, bool strip, bool lower) {
  std::vector<uint32_t> c = utf8_decode(s), o;
  o.reserve(c.size());
  for (uint32_t x : c) {
    if (clean) {
      if (x == 0 || x == 0xFFFD || is_bert_control(x)) continue;
      if (is_bert_whitespace(x) || is_space(x)) x = ' ';
    }
    if (chinese && is_cjk(x)) {
      o.push_back(' ');
      o.push_back(x);
      o.push_back(' ');
    } else {
      o.push_back(x);
    }
  }
  if (strip) {
    std::vector<uint32_t> d;
    for (uint32_t x : o) nfd_append(d, x);
    o.clear();
    for (uint32_t x : d)
      if (!is_mark_nonspacing(x)) o.push_back(x);
  }
  if (lower)
    for (uint32_t& x : o) x = to_lower(x);
  return utf8_encode(o);
}

}  // namespace

Normalizer make_normalizer(const json& j, const std::string& path) {
  std::string t = type_of(j, path);
  if (t == "Sequence") {
    std::vector<Normalizer> seq;
    const json& a = need_array(j, "normalizers", path);
    for (size_t i = 0; i < a.size(); ++i)
      seq.push_back(make_normalizer(a[i], path + ".normalizers[" + std::to_string(i) + "]"));
    return [seq](const std::string& s) {
      std::string r = s;
      for (auto& f : seq) r = f(r);
      return r;
    };
  }
  if (t == "Prepend") {
    std::string p = get_str(j, "prepend", path);
    check_utf8(p, path + ".prepend");
    return [p](const std::string& s) { return s.empty() ? s : p + s; };
  }
  if (t == "Replace") {
    std::string from = pattern_string(j, path), to = get_str(j, "content", path);
    check_utf8(from, path + ".pattern");
    check_utf8(to, path + ".content");
    return [from, to](const std::string& s) { return replace_all(s, from, to); };
  }
  if (t == "Lowercase")
    return [](const std::string& s) {
      std::vector<uint32_t> c = utf8_decode(s);
      for (auto& x : c) x = to_lower(x);
      return utf8_encode(c);
    };
  if (t == "NFD" || t == "NFKD")
    return [](const std::string& s) {
      std::vector<uint32_t> d;
      for (uint32_t x : utf8_decode(s)) nfd_append(d, x);
      return utf8_encode(d);
    };
  // NFC / NFKC / Precompiled: approximated as identity (text already in NFC is unchanged).
  if (t == "NFC" || t == "NFKC" || t == "Precompiled") return [](const std::string& s) { return s; };
  if (t == "StripAccents")
    return [](const std::string& s) {
      std::vector<uint32_t> o;
      for (uint32_t x : utf8_decode(s))
        if (!is_mark_nonspacing(x)) o.push_back(x);
      return utf8_encode(o);
    };
  if (t == "Strip") {
    bool l = opt_bool(j, "strip_left", path, true), r = opt_bool(j, "strip_right", path, true);
    return [l, r](const std::string& s) {
      std::vector<uint32_t> c = utf8_decode(s);
      size_t a = 0, b = c.size();
      if (l)
        while (a < b && is_space(c[a])) ++a;
      if (r)
        while (b > a && is_space(c[b - 1])) --b;
      return utf8_encode(std::vector<uint32_t>(c.begin() + a, c.begin() + b));
    };
  }
  if (t == "BertNormalizer") {
    bool clean = opt_bool(j, "clean_text", path, true), chinese = opt_bool(j, "handle_chinese_chars", path, true);
    bool lower = opt_bool(j, "lowercase", path, true);
    bool strip = opt_bool(j, "strip_accents", path, lower);
    return [=](const std::string& s) { return bert_normalize(s, clean, chinese, strip, lower); };
  }
  bad_field(path + ".type", "unsupported normalizer '" + t + "'");
}

}  // namespace peft::tok::hf
