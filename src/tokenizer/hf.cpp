// Hugging Face tokenizer.json: normalizers, pre-tokenizers, models (BPE, WordPiece, Unigram,
// WordLevel), post-processors and decoders, plus added (special) tokens. Also the GPT-2
// vocab.json+merges.txt and BERT vocab.txt fallbacks (converted to the same JSON layout).
#include <algorithm>
#include <cmath>
#include <functional>
#include <unordered_map>

#include "tokenizer/internal.h"
#include "tokenizer/merge.h"
#include "tokenizer/unicode.h"

namespace peft::tok {
namespace {

const std::string kSp = "\xE2\x96\x81";  // ▁

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
struct ByteMap {
  std::string byte_to_str[256];
  std::unordered_map<uint32_t, unsigned char> cp_to_byte;
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      uint32_t cp = keep ? uint32_t(b) : uint32_t(256 + n++);
      utf8_append(byte_to_str[b], cp);
      cp_to_byte[cp] = (unsigned char)b;
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

// ---------------------------------------------------------------------------------------------
// Regex-equivalent splitters. GPT-2:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// cl100k / Llama-3 (digits=3) and Qwen2 (digits=1):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
const std::string kGpt2Regex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const std::string kCl100kRegex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const std::string kQwenRegex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

bool is_other(uint32_t c) { return !is_space(c) && !is_letter(c) && !is_number(c); }

// Length (in code points) of a whitespace match starting at i: \s+(?!\S) then \s+.
size_t ws_match(const std::vector<uint32_t>& c, size_t i) {
  size_t k = i;
  while (k < c.size() && is_space(c[k])) ++k;
  if (k == c.size() || k - i == 1) return k - i;
  return k - i - 1;
}

size_t contraction(const std::vector<uint32_t>& c, size_t i, bool icase) {
  if (c[i] != '\'' || i + 1 >= c.size()) return 0;
  auto low = [&](size_t k) -> uint32_t {
    if (k >= c.size()) return 0;
    uint32_t x = c[k];
    return (icase && x >= 'A' && x <= 'Z') ? x + 32 : x;
  };
  uint32_t a = low(i + 1), b = low(i + 2);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

std::vector<std::string> split_gpt2(const std::string& s) {
  std::vector<uint32_t> c = utf8_decode(s);
  std::vector<std::string> out;
  size_t n = c.size(), i = 0;
  while (i < n) {
    size_t len = contraction(c, i, false);
    if (!len) {
      size_t j = i;
      bool sp = c[j] == ' ' && j + 1 < n;
      uint32_t h = sp ? c[j + 1] : c[j];
      if (is_letter(c[j]) || (sp && is_letter(h))) {
        if (!is_letter(c[j])) ++j;
        while (j < n && is_letter(c[j])) ++j;
        len = j - i;
      } else if (is_number(c[j]) || (sp && is_number(h))) {
        if (!is_number(c[j])) ++j;
        while (j < n && is_number(c[j])) ++j;
        len = j - i;
      } else if (is_other(c[j]) || (sp && is_other(h))) {
        if (!is_other(c[j])) ++j;
        while (j < n && is_other(c[j])) ++j;
        len = j - i;
      } else {
        len = ws_match(c, i);
      }
    }
    out.push_back(utf8_encode(std::vector<uint32_t>(c.begin() + i, c.begin() + i + len)));
    i += len;
  }
  return out;
}

std::vector<std::string> split_cl100k(const std::string& s, size_t max_digits) {
  std::vector<uint32_t> c = utf8_decode(s);
  std::vector<std::string> out;
  size_t n = c.size(), i = 0;
  auto crlf = [](uint32_t x) { return x == '\r' || x == '\n'; };
  while (i < n) {
    size_t len = contraction(c, i, true);
    if (!len) {
      size_t j = i;
      if (is_letter(c[i]) || (!crlf(c[i]) && !is_number(c[i]) && i + 1 < n && is_letter(c[i + 1]))) {
        if (!is_letter(c[j])) ++j;
        while (j < n && is_letter(c[j])) ++j;
        len = j - i;
      } else if (is_number(c[i])) {
        while (j < n && j - i < max_digits && is_number(c[j])) ++j;
        len = j - i;
      } else if (is_other(c[i]) || (c[i] == ' ' && i + 1 < n && is_other(c[i + 1]))) {
        if (!is_other(c[j])) ++j;
        while (j < n && is_other(c[j])) ++j;
        while (j < n && crlf(c[j])) ++j;
        len = j - i;
      } else {
        // whitespace: \s*[\r\n]+ (up to the last CR/LF of the run), else \s+(?!\S), \s+
        size_t k = i;
        size_t last_nl = std::string::npos;
        while (k < n && is_space(c[k])) {
          if (crlf(c[k])) last_nl = k;
          ++k;
        }
        len = last_nl != std::string::npos ? last_nl + 1 - i : ws_match(c, i);
      }
    }
    out.push_back(utf8_encode(std::vector<uint32_t>(c.begin() + i, c.begin() + i + len)));
    i += len;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Normalizers: string -> string.
using Normalizer = std::function<std::string(const std::string&)>;

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

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers: split each word further. `first` is true for the segment at text start.
using PreTok = std::function<void(std::vector<std::string>&, bool first)>;

void map_words(std::vector<std::string>& words, const std::function<std::vector<std::string>(const std::string&)>& f) {
  std::vector<std::string> out;
  for (auto& w : words)
    for (auto& p : f(w))
      if (!p.empty()) out.push_back(std::move(p));
  words.swap(out);
}

// Split on code points where pred is true, with HF's SplitDelimiterBehavior.
std::vector<std::string> split_by(const std::string& s, const std::function<bool(uint32_t)>& pred,
                                  const std::string& behavior) {
  std::vector<uint32_t> c = utf8_decode(s);
  std::vector<std::string> out;
  std::vector<uint32_t> cur;
  auto flush = [&] {
    if (!cur.empty()) out.push_back(utf8_encode(cur));
    cur.clear();
  };
  for (size_t i = 0; i < c.size(); ++i) {
    bool d = pred(c[i]);
    if (!d) {
      cur.push_back(c[i]);
      continue;
    }
    if (behavior == "Removed") {
      flush();
    } else if (behavior == "Isolated") {
      flush();
      cur.push_back(c[i]);
      flush();
    } else if (behavior == "MergedWithPrevious") {
      cur.push_back(c[i]);
      flush();
    } else if (behavior == "MergedWithNext") {
      flush();
      cur.push_back(c[i]);
    } else {  // Contiguous
      if (!cur.empty() && !pred(cur.back())) flush();
      cur.push_back(c[i]);
      if (i + 1 >= c.size() || !pred(c[i + 1])) flush();
    }
  }
  flush();
  return out;
}

std::string check_behavior(const json& j, const std::string& path, const std::string& dflt) {
  std::string b = opt_str(j, "behavior", path, dflt);
  static const char* ok[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
  for (const char* o : ok)
    if (b == o) return b;
  bad_field(path + ".behavior", "unknown behavior '" + b + "'");
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

PreTok make_pretok(const json& j, const std::string& path) {
  std::string t = type_of(j, path);
  if (t == "Sequence") {
    std::vector<PreTok> seq;
    const json& a = need_array(j, "pretokenizers", path);
    for (size_t i = 0; i < a.size(); ++i)
      seq.push_back(make_pretok(a[i], path + ".pretokenizers[" + std::to_string(i) + "]"));
    return [seq](std::vector<std::string>& w, bool first) {
      for (auto& f : seq) f(w, first);
    };
  }
  if (t == "ByteLevel") {
    bool prefix = opt_bool(j, "add_prefix_space", path, true);
    bool regex = opt_bool(j, "use_regex", path, true);
    return [prefix, regex](std::vector<std::string>& words, bool) {
      const ByteMap& bm = byte_map();
      map_words(words, [&](const std::string& w) {
        std::string s = w;
        if (prefix && !s.empty() && s[0] != ' ') s = " " + s;
        std::vector<std::string> parts = regex ? split_gpt2(s) : std::vector<std::string>{s};
        for (auto& p : parts) {
          std::string m;
          for (unsigned char b : p) m += bm.byte_to_str[b];
          p = m;
        }
        return parts;
      });
    };
  }
  if (t == "Metaspace") {
    std::string rep = opt_str(j, "replacement", path, kSp);
    check_utf8(rep, path + ".replacement");
    std::string scheme = prepend_scheme(j, path);
    bool split = opt_bool(j, "split", path, true);
    std::vector<uint32_t> rc = utf8_decode(rep);
    if (rc.size() != 1) bad_field(path + ".replacement", "expected one character");
    uint32_t repc = rc[0];
    return [=](std::vector<std::string>& words, bool first) {
      bool is_first = first;
      map_words(words, [&](const std::string& w) -> std::vector<std::string> {
        std::string s = replace_all(w, " ", rep);
        if ((scheme == "always" || (scheme == "first" && is_first)) && s.compare(0, rep.size(), rep) != 0)
          s = rep + s;
        is_first = false;
        if (!split) return {s};
        return split_by(s, [repc](uint32_t c) { return c == repc; }, "MergedWithNext");
      });
    };
  }
  if (t == "BertPreTokenizer") {
    return [](std::vector<std::string>& words, bool) {
      map_words(words, [](const std::string& w) {
        std::vector<std::string> out;
        for (auto& p : split_by(w, [](uint32_t c) { return is_space(c) || is_bert_whitespace(c); }, "Removed"))
          for (auto& q : split_by(p, is_bert_punct, "Isolated")) out.push_back(q);
        return out;
      });
    };
  }
  if (t == "WhitespaceSplit") {
    return [](std::vector<std::string>& words, bool) {
      map_words(words, [](const std::string& w) { return split_by(w, is_space, "Removed"); });
    };
  }
  if (t == "Whitespace") {  // \w+|[^\w\s]+
    return [](std::vector<std::string>& words, bool) {
      map_words(words, [](const std::string& w) {
        auto word = [](uint32_t c) {
          return is_letter(c) || is_number(c) || c == '_' || is_mark_nonspacing(c);
        };
        std::vector<uint32_t> c = utf8_decode(w);
        std::vector<std::string> out;
        size_t i = 0;
        while (i < c.size()) {
          if (is_space(c[i])) {
            ++i;
            continue;
          }
          size_t k = i;
          bool wd = word(c[i]);
          while (k < c.size() && !is_space(c[k]) && word(c[k]) == wd) ++k;
          out.push_back(utf8_encode(std::vector<uint32_t>(c.begin() + i, c.begin() + k)));
          i = k;
        }
        return out;
      });
    };
  }
  if (t == "Digits") {
    bool individual = opt_bool(j, "individual_digits", path, false);
    return [individual](std::vector<std::string>& words, bool) {
      map_words(words, [&](const std::string& w) {
        return split_by(w, [](uint32_t c) { return c >= '0' && c <= '9'; }, individual ? "Isolated" : "Contiguous");
      });
    };
  }
  if (t == "Punctuation") {
    std::string b = check_behavior(j, path, "Isolated");
    return [b](std::vector<std::string>& words, bool) {
      map_words(words, [&](const std::string& w) { return split_by(w, is_bert_punct, b); });
    };
  }
  if (t == "Split") {
    const json& p = need(j, "pattern", path);
    std::string b = check_behavior(j, path, "Isolated");
    bool invert = opt_bool(j, "invert", path, false);
    if (has(p, "String")) {
      std::string lit = get_str(p, "String", path + ".pattern");
      std::vector<uint32_t> lc = utf8_decode(lit, "pattern");
      if (lc.size() != 1 || invert) bad_field(path + ".pattern", "only single-character String patterns are supported");
      uint32_t ch = lc[0];
      return [b, ch](std::vector<std::string>& words, bool) {
        map_words(words, [&](const std::string& w) { return split_by(w, [ch](uint32_t c) { return c == ch; }, b); });
      };
    }
    std::string re = has(p, "Regex") ? get_str(p, "Regex", path + ".pattern") : std::string();
    if (b != "Isolated" || invert)
      bad_field(path, "Split with a regex is supported only with behavior Isolated, invert false");
    if (re == kGpt2Regex)
      return [](std::vector<std::string>& w, bool) { map_words(w, split_gpt2); };
    if (re == kCl100kRegex)
      return [](std::vector<std::string>& w, bool) { map_words(w, [](const std::string& s) { return split_cl100k(s, 3); }); };
    if (re == kQwenRegex)
      return [](std::vector<std::string>& w, bool) { map_words(w, [](const std::string& s) { return split_cl100k(s, 1); }); };
    bad_field(path + ".pattern", "unsupported Split regex '" + re + "' (supported: GPT-2, cl100k/Llama-3, Qwen2 patterns)");
  }
  bad_field(path + ".type", "unsupported pre_tokenizer '" + t + "'");
}

// ---------------------------------------------------------------------------------------------
// Decoders: token strings -> token strings (joined at the end).
using Decoder = std::function<void(std::vector<std::string>&)>;

bool byte_token(const std::string& t, unsigned char* b) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return false;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int h = hex(t[3]), l = hex(t[4]);
  if (h < 0 || l < 0) return false;
  *b = (unsigned char)(h * 16 + l);
  return true;
}

std::string wordpiece_cleanup(std::string s) {
  static const std::pair<const char*, const char*> reps[] = {
      {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
      {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (auto& r : reps) s = replace_all(s, r.first, r.second);
  return s;
}

Decoder make_decoder(const json& j, const std::string& path) {
  std::string t = type_of(j, path);
  if (t == "Sequence") {
    std::vector<Decoder> seq;
    const json& a = need_array(j, "decoders", path);
    for (size_t i = 0; i < a.size(); ++i)
      seq.push_back(make_decoder(a[i], path + ".decoders[" + std::to_string(i) + "]"));
    return [seq](std::vector<std::string>& toks) {
      for (auto& f : seq) f(toks);
    };
  }
  if (t == "ByteLevel") {
    return [](std::vector<std::string>& toks) {
      const ByteMap& bm = byte_map();
      std::string bytes;
      for (auto& tk : toks) {
        size_t i = 0;
        while (i < tk.size()) {
          size_t l = std::min(size_t(utf8_len((unsigned char)tk[i])), tk.size() - i);
          std::string ch = tk.substr(i, l);
          std::vector<uint32_t> cp;
          if (utf8_invalid_at(ch) == std::string::npos) cp = utf8_decode(ch);
          auto it = cp.size() == 1 ? bm.cp_to_byte.find(cp[0]) : bm.cp_to_byte.end();
          if (it != bm.cp_to_byte.end())
            bytes += char(it->second);
          else
            bytes += ch;
          i += l;
        }
      }
      toks.assign(1, utf8_lossy(bytes));
    };
  }
  if (t == "Metaspace") {
    std::string rep = opt_str(j, "replacement", path, kSp);
    std::string scheme = prepend_scheme(j, path);
    return [rep, scheme](std::vector<std::string>& toks) {
      for (size_t i = 0; i < toks.size(); ++i)
        toks[i] = replace_all(toks[i], rep, (i == 0 && scheme != "never") ? "" : " ");
    };
  }
  if (t == "WordPiece") {
    std::string prefix = opt_str(j, "prefix", path, "##");
    bool cleanup = opt_bool(j, "cleanup", path, true);
    return [prefix, cleanup](std::vector<std::string>& toks) {
      for (size_t i = 0; i < toks.size(); ++i) {
        if (i != 0) {
          if (!prefix.empty() && toks[i].compare(0, prefix.size(), prefix) == 0)
            toks[i] = toks[i].substr(prefix.size());
          else
            toks[i] = " " + toks[i];
        }
      }
      if (cleanup) {  // on the joined text, like transformers' clean_up_tokenization
        std::string s;
        for (auto& t : toks) s += t;
        toks.assign(1, wordpiece_cleanup(s));
      }
    };
  }
  if (t == "ByteFallback") {
    return [](std::vector<std::string>& toks) {
      std::vector<std::string> out;
      std::string pending;
      size_t npending = 0;
      auto flush = [&] {
        if (!npending) return;
        if (utf8_invalid_at(pending) == std::string::npos) {
          out.push_back(pending);
        } else {
          for (size_t k = 0; k < npending; ++k) out.push_back("\xEF\xBF\xBD");
        }
        pending.clear();
        npending = 0;
      };
      for (auto& tk : toks) {
        unsigned char b;
        if (byte_token(tk, &b)) {
          pending += char(b);
          ++npending;
        } else {
          flush();
          out.push_back(tk);
        }
      }
      flush();
      toks.swap(out);
    };
  }
  if (t == "Fuse") {
    return [](std::vector<std::string>& toks) {
      std::string s;
      for (auto& tk : toks) s += tk;
      toks.assign(1, s);
    };
  }
  if (t == "Strip") {
    std::string content = get_str(j, "content", path);
    int64_t start = opt_int(j, "start", path, 0), stop = opt_int(j, "stop", path, 0);
    if (start < 0 || stop < 0) bad_field(path, "start/stop must be >= 0");
    return [content, start, stop](std::vector<std::string>& toks) {
      if (content.empty()) return;
      for (auto& tk : toks) {
        for (int64_t k = 0; k < start && tk.compare(0, content.size(), content) == 0; ++k) tk.erase(0, content.size());
        for (int64_t k = 0; k < stop && tk.size() >= content.size() &&
                            tk.compare(tk.size() - content.size(), content.size(), content) == 0;
             ++k)
          tk.erase(tk.size() - content.size());
      }
    };
  }
  if (t == "Replace") {
    std::string from = pattern_string(j, path), to = get_str(j, "content", path);
    return [from, to](std::vector<std::string>& toks) {
      for (auto& tk : toks) tk = replace_all(tk, from, to);
    };
  }
  if (t == "BPEDecoder") {
    std::string suffix = opt_str(j, "suffix", path, "</w>");
    return [suffix](std::vector<std::string>& toks) {
      for (size_t i = 0; i < toks.size(); ++i)
        toks[i] = replace_all(toks[i], suffix, i + 1 == toks.size() ? "" : " ");
    };
  }
  bad_field(path + ".type", "unsupported decoder '" + t + "'");
}

// ---------------------------------------------------------------------------------------------
// Models.
struct Model {
  virtual ~Model() = default;
  virtual void tokenize(const std::string& word, std::vector<int64_t>& out) const = 0;
  std::vector<std::string> id_to_tok;  // "" for holes
  std::unordered_map<std::string, int64_t> tok_to_id;
  int64_t unk = -1;
  int64_t id_limit = 100000000;  // ids may leave holes, but not absurdly many

  void add_vocab(const std::string& tok, int64_t id, const std::string& path) {
    if (id < 0 || id > id_limit) bad_field(path, "token id " + std::to_string(id) + " out of range [0, " + std::to_string(id_limit) + "]");
    check_utf8(tok, path);
    if (size_t(id) >= id_to_tok.size()) id_to_tok.resize(size_t(id) + 1);
    id_to_tok[size_t(id)] = tok;
    tok_to_id[tok] = id;
  }
  int64_t find(const std::string& t) const {
    auto it = tok_to_id.find(t);
    return it == tok_to_id.end() ? -1 : it->second;
  }
  void read_dict_vocab(const json& m, const std::string& path) {
    const json& v = need(m, "vocab", path);
    if (!v.is_object()) bad_field(path + ".vocab", std::string("expected an object, got ") + v.type_name());
    id_limit = int64_t(v.size()) * 2 + 65536;
    for (auto it = v.begin(); it != v.end(); ++it)
      add_vocab(it.key(), get_int(it.value(), path + ".vocab[\"" + it.key() + "\"]"), path + ".vocab");
  }
  void set_unk(const json& m, const std::string& path) {
    if (!has(m, "unk_token")) return;
    std::string u = get_str(m, "unk_token", path);
    unk = find(u);
    if (unk < 0) bad_field(path + ".unk_token", "'" + u + "' is not in the vocabulary");
  }
};

struct BpeModel : Model {
  std::unordered_map<uint64_t, std::pair<int64_t, int64_t>> merges;  // (a,b) -> (rank, merged)
  std::string prefix, suffix;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;
  int64_t byte_ids[256];

  static uint64_t key(int64_t a, int64_t b) { return (uint64_t(a) << 32) | uint64_t(b); }

  BpeModel(const json& m, const std::string& path) {
    read_dict_vocab(m, path);
    set_unk(m, path);
    prefix = opt_str(m, "continuing_subword_prefix", path, "");
    suffix = opt_str(m, "end_of_word_suffix", path, "");
    byte_fallback = opt_bool(m, "byte_fallback", path, false);
    fuse_unk = opt_bool(m, "fuse_unk", path, false);
    ignore_merges = opt_bool(m, "ignore_merges", path, false);
    if (has(m, "dropout") && !m["dropout"].is_null() && get_num(m["dropout"], path + ".dropout") != 0)
      bad_field(path + ".dropout", "BPE dropout is not supported");
    for (int b = 0; b < 256; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      byte_ids[b] = find(buf);
    }
    const json& ms = need_array(m, "merges", path);
    for (size_t r = 0; r < ms.size(); ++r) {
      std::string mp = path + ".merges[" + std::to_string(r) + "]";
      std::string a, b;
      const json& e = ms[r];
      if (e.is_string()) {
        std::string s = e.get<std::string>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          bad_field(mp, "expected \"left right\", got '" + s + "'");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        bad_field(mp, "expected a string \"left right\" or a [left, right] pair");
      }
      int64_t ia = find(a), ib = find(b), im = find(a + b);
      if (ia < 0) bad_field(mp, "token '" + a + "' is not in the vocabulary");
      if (ib < 0) bad_field(mp, "token '" + b + "' is not in the vocabulary");
      if (im < 0) bad_field(mp, "merged token '" + a + b + "' is not in the vocabulary");
      merges.emplace(key(ia, ib), std::make_pair(int64_t(r), im));
    }
  }

  void tokenize(const std::string& word, std::vector<int64_t>& out) const override {
    if (ignore_merges) {
      int64_t id = find(word);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    std::vector<int64_t> syms;
    bool last_unk = false;
    size_t i = 0;
    while (i < word.size()) {
      size_t l = std::min(size_t(utf8_len((unsigned char)word[i])), word.size() - i);
      std::string ch = word.substr(i, l);
      bool first = i == 0, last = i + l == word.size();
      if (!first) ch = prefix + ch;
      if (last) ch += suffix;
      int64_t id = find(ch);
      i += l;
      if (id >= 0) {
        syms.push_back(id);
        last_unk = false;
        continue;
      }
      if (byte_fallback) {
        bool all = true;
        for (size_t k = i - l; k < i; ++k)
          if (byte_ids[(unsigned char)word[k]] < 0) all = false;
        if (all) {
          for (size_t k = i - l; k < i; ++k) syms.push_back(byte_ids[(unsigned char)word[k]]);
          last_unk = false;
          continue;
        }
      }
      if (unk >= 0) {
        if (!(fuse_unk && last_unk)) syms.push_back(unk);
        last_unk = true;
      }
    }
    syms = merge_greedy(syms, [&](int64_t a, int64_t b, double* k, int64_t* merged) {
      auto it = merges.find(key(a, b));
      if (it == merges.end()) return false;
      *k = double(it->second.first);
      *merged = it->second.second;
      return true;
    });
    out.insert(out.end(), syms.begin(), syms.end());
  }
};

struct WordPieceModel : Model {
  std::string prefix;
  int64_t max_chars = 100;
  WordPieceModel(const json& m, const std::string& path) {
    read_dict_vocab(m, path);
    set_unk(m, path);
    if (unk < 0) bad_field(path + ".unk_token", "WordPiece needs an unk_token");
    prefix = opt_str(m, "continuing_subword_prefix", path, "##");
    max_chars = opt_int(m, "max_input_chars_per_word", path, 100);
  }
  void tokenize(const std::string& word, std::vector<int64_t>& out) const override {
    std::vector<uint32_t> c = utf8_decode(word);
    if (int64_t(c.size()) > max_chars) {
      out.push_back(unk);
      return;
    }
    std::vector<int64_t> sub;
    size_t start = 0;
    while (start < c.size()) {
      size_t end = c.size();
      int64_t cur = -1;
      while (start < end) {
        std::string s = utf8_encode(std::vector<uint32_t>(c.begin() + start, c.begin() + end));
        if (start > 0) s = prefix + s;
        int64_t id = find(s);
        if (id >= 0) {
          cur = id;
          break;
        }
        --end;
      }
      if (cur < 0) {
        out.push_back(unk);
        return;
      }
      sub.push_back(cur);
      start = end;
    }
    out.insert(out.end(), sub.begin(), sub.end());
  }
};

struct WordLevelModel : Model {
  WordLevelModel(const json& m, const std::string& path) {
    read_dict_vocab(m, path);
    set_unk(m, path);
  }
  void tokenize(const std::string& word, std::vector<int64_t>& out) const override {
    int64_t id = find(word);
    if (id >= 0)
      out.push_back(id);
    else if (unk >= 0)
      out.push_back(unk);
  }
};

struct UnigramModel : Model {
  std::vector<double> scores;
  size_t max_len = 1;  // bytes
  double unk_score = 0;
  bool byte_fallback = false;
  int64_t byte_ids[256];

  UnigramModel(const json& m, const std::string& path) {
    const json& v = need_array(m, "vocab", path);
    double min_score = 0;
    for (size_t i = 0; i < v.size(); ++i) {
      std::string p = path + ".vocab[" + std::to_string(i) + "]";
      const json& e = v[i];
      if (!e.is_array() || e.size() != 2 || !e[0].is_string())
        bad_field(p, "expected [piece, score]");
      std::string piece = e[0].get<std::string>();
      double s = get_num(e[1], p + "[1]");
      if (!std::isfinite(s)) bad_field(p + "[1]", "score must be finite");
      check_utf8(piece, p);
      id_to_tok.push_back(piece);
      tok_to_id.emplace(piece, int64_t(i));
      scores.push_back(s);
      min_score = std::min(min_score, s);
      max_len = std::max(max_len, piece.size());
    }
    if (v.empty()) bad_field(path + ".vocab", "empty");
    unk = opt_int(m, "unk_id", path, -1);
    if (unk >= int64_t(v.size()) || unk < -1) bad_field(path + ".unk_id", "out of range");
    unk_score = min_score - 10.0;
    byte_fallback = opt_bool(m, "byte_fallback", path, false);
    for (int b = 0; b < 256; ++b) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "<0x%02X>", b);
      byte_ids[b] = find(buf);
    }
  }

  void tokenize(const std::string& s, std::vector<int64_t>& out) const override {
    size_t n = s.size();
    auto path = tok::unigram_viterbi(s, max_len, unk_score, [&](const std::string& piece, int64_t* id, double* sc) {
      auto it = tok_to_id.find(piece);
      if (it == tok_to_id.end()) return false;
      *id = it->second;
      *sc = scores[it->second];
      return true;
    });
    bool last_unk = false;
    for (size_t k = 0; k < path.size(); ++k) {
      int64_t id = path[k].second;
      if (id != -2) {
        out.push_back(id);
        last_unk = false;
        continue;
      }
      size_t b = path[k].first, e = k + 1 < path.size() ? path[k + 1].first : n;
      if (byte_fallback) {
        bool all = true;
        for (size_t q = b; q < e; ++q)
          if (byte_ids[(unsigned char)s[q]] < 0) all = false;
        if (all) {
          for (size_t q = b; q < e; ++q) out.push_back(byte_ids[(unsigned char)s[q]]);
          last_unk = false;
          continue;
        }
      }
      if (unk < 0) fail("Unigram: text has characters outside the vocabulary and the model has no unk_id");
      if (!last_unk) out.push_back(unk);
      last_unk = true;
    }
  }
};

// ---------------------------------------------------------------------------------------------
// Post-processing.
struct TemplatePiece {
  bool special;
  std::vector<int64_t> ids;  // special token ids
  int seq;                   // 0 = A, 1 = B
  int64_t type_id;
};

struct AddedToken {
  std::string content;
  int64_t id;
  bool special, lstrip, rstrip;
};

class HfTokenizer : public Tokenizer {
 public:
  HfTokenizer(const json& j, const std::string& where, const SpecialConfig& cfg) {
    if (!j.is_object()) fail("expected a JSON object at the top level");
    const json& m = need(j, "model", "");
    std::string mt = has(m, "type") ? type_of(m, "model") : (has(m, "merges") ? "BPE" : "");
    if (mt == "BPE")
      model_ = std::make_unique<BpeModel>(m, "model");
    else if (mt == "WordPiece")
      model_ = std::make_unique<WordPieceModel>(m, "model");
    else if (mt == "Unigram")
      model_ = std::make_unique<UnigramModel>(m, "model");
    else if (mt == "WordLevel")
      model_ = std::make_unique<WordLevelModel>(m, "model");
    else
      bad_field("model.type", "unsupported model type '" + mt + "'");
    if (has(j, "normalizer")) normalizer_ = make_normalizer(j["normalizer"], "normalizer");
    if (has(j, "pre_tokenizer")) pretok_ = make_pretok(j["pre_tokenizer"], "pre_tokenizer");
    if (has(j, "decoder")) decoder_ = make_decoder(j["decoder"], "decoder");
    if (has(j, "added_tokens")) {
      const json& a = need_array(j, "added_tokens", "");
      for (size_t i = 0; i < a.size(); ++i) {
        std::string p = "added_tokens[" + std::to_string(i) + "]";
        AddedToken t;
        t.content = get_str(a[i], "content", p);
        check_utf8(t.content, p + ".content");
        if (t.content.empty()) bad_field(p + ".content", "empty");
        t.id = get_int(need(a[i], "id", p), p + ".id");
        if (t.id < 0 || t.id > 100000000) bad_field(p + ".id", "out of range");
        t.special = opt_bool(a[i], "special", p, false);
        t.lstrip = opt_bool(a[i], "lstrip", p, false);
        t.rstrip = opt_bool(a[i], "rstrip", p, false);
        added_.push_back(t);
        added_by_id_[t.id] = added_.size() - 1;
        added_by_content_[t.content] = t.id;
        if (t.special) special_ids_.push_back(t.id);
      }
      std::sort(special_ids_.begin(), special_ids_.end());
      // Longest first so that matching prefers the longest added token.
      added_sorted_ = added_;
      std::stable_sort(added_sorted_.begin(), added_sorted_.end(),
                       [](const AddedToken& x, const AddedToken& y) { return x.content.size() > y.content.size(); });
    }
    vocab_ = int64_t(model_->id_to_tok.size());
    for (auto& t : added_) vocab_ = std::max(vocab_, t.id + 1);
    if (has(j, "post_processor")) read_post(j["post_processor"], "post_processor");
    // Special ids.
    unk_id = model_->unk;
    auto first_of = [&](std::initializer_list<const char*> names) -> int64_t {
      for (const char* n : names) {
        int64_t id = token_to_id(n);
        if (id >= 0) return id;
      }
      return -1;
    };
    if (!single_.empty() && single_.front().special && single_.front().ids.size() == 1) bos_id = single_.front().ids[0];
    if (!single_.empty() && single_.back().special && single_.back().ids.size() == 1) eos_id = single_.back().ids[0];
    if (bos_id < 0) bos_id = first_of({"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>"});
    if (eos_id < 0) eos_id = first_of({"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"});
    pad_id = first_of({"<pad>", "[PAD]", "<|pad|>"});
    if (unk_id < 0) unk_id = first_of({"<unk>", "[UNK]"});
    apply_special_config(*this, cfg);
    // tokenizer_config add_bos_token / add_eos_token override a Llama-style template.
    if ((cfg.add_bos || cfg.add_eos) && !bert_like_) {
      bool ab = cfg.add_bos.value_or(!single_.empty() && single_.front().special);
      bool ae = cfg.add_eos.value_or(!single_.empty() && single_.back().special && single_.size() > 1);
      single_.clear();
      pair_.clear();
      if (ab && bos_id >= 0) single_.push_back({true, {bos_id}, 0, 0});
      single_.push_back({false, {}, 0, 0});
      if (ae && eos_id >= 0) single_.push_back({true, {eos_id}, 0, 0});
      pair_ = single_;
      for (auto p : single_) {
        p.seq = p.special ? 0 : 1;
        p.type_id = 1;
        pair_.push_back(p);
      }
      has_post_ = true;
    }
    (void)where;
  }

  int64_t vocab_size() const override { return vocab_; }

  std::string id_to_token(int64_t id) const override {
    check_id(id, vocab_, "id_to_token");
    auto it = added_by_id_.find(id);
    if (it != added_by_id_.end()) return added_[it->second].content;
    if (size_t(id) < model_->id_to_tok.size()) return model_->id_to_tok[size_t(id)];
    return "";
  }
  int64_t token_to_id(const std::string& tok) const override {
    auto it = added_by_content_.find(tok);
    if (it != added_by_content_.end()) return it->second;
    return model_->find(tok);
  }

  std::vector<int64_t> encode(const std::string& text, bool add_special) const override {
    std::vector<int64_t> a = encode_raw(text);
    if (!add_special || !has_post_) return a;
    std::vector<int64_t> ids, types;
    apply_template(single_, a, nullptr, ids, types);
    return ids;
  }

  std::vector<int64_t> encode_pair(const std::string& sa, const std::string& sb,
                                   std::vector<int64_t>* token_type_ids) const override {
    std::vector<int64_t> a = encode_raw(sa), b = encode_raw(sb), ids, types;
    if (has_post_ && !pair_.empty()) {
      apply_template(pair_, a, &b, ids, types);
    } else {
      ids = a;
      types.assign(a.size(), 0);
      ids.insert(ids.end(), b.begin(), b.end());
      types.insert(types.end(), b.size(), 1);
    }
    if (token_type_ids) *token_type_ids = types;
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override {
    std::vector<std::string> toks;
    for (int64_t id : ids) {
      check_id(id, vocab_);
      if (skip_special && std::binary_search(special_ids_.begin(), special_ids_.end(), id)) continue;
      toks.push_back(id_to_token(id));
    }
    if (decoder_) decoder_(toks);
    std::string out;
    for (auto& t : toks) out += t;
    return out;
  }

 private:
  std::vector<int64_t> encode_raw(const std::string& text) const {
    size_t bad = utf8_invalid_at(text);
    PEFT_CHECK(bad == std::string::npos, "encode: invalid UTF-8 in input text at byte ", bad);
    std::vector<int64_t> out;
    // Split around added tokens (longest match at the leftmost position).
    size_t seg_start = 0, i = 0;
    std::string pending;
    auto flush_text = [&](size_t end, bool rstrip_prev, bool lstrip_next) {
      size_t b = seg_start, e = end;
      if (rstrip_prev)
        while (b < e && std::isspace((unsigned char)text[b])) ++b;
      if (lstrip_next)
        while (e > b && std::isspace((unsigned char)text[e - 1])) --e;
      if (e > b) encode_segment(text.substr(b, e - b), b == 0, out);
    };
    bool rstrip_prev = false;
    while (i < text.size() && !added_sorted_.empty()) {
      const AddedToken* hit = nullptr;
      for (const auto& t : added_sorted_)
        if (text.compare(i, t.content.size(), t.content) == 0) {
          hit = &t;
          break;
        }
      if (!hit) {
        ++i;
        continue;
      }
      flush_text(i, rstrip_prev, hit->lstrip);
      out.push_back(hit->id);
      rstrip_prev = hit->rstrip;
      i += hit->content.size();
      seg_start = i;
    }
    flush_text(text.size(), rstrip_prev, false);
    return out;
  }

  void encode_segment(const std::string& s, bool first, std::vector<int64_t>& out) const {
    std::string norm = normalizer_ ? normalizer_(s) : s;
    std::vector<std::string> words{norm};
    if (pretok_) pretok_(words, first);
    for (const auto& w : words)
      if (!w.empty()) model_->tokenize(w, out);
  }

  void apply_template(const std::vector<TemplatePiece>& tpl, const std::vector<int64_t>& a,
                      const std::vector<int64_t>* b, std::vector<int64_t>& ids,
                      std::vector<int64_t>& types) const {
    for (const auto& p : tpl) {
      if (p.special) {
        ids.insert(ids.end(), p.ids.begin(), p.ids.end());
        types.insert(types.end(), p.ids.size(), p.type_id);
      } else {
        const std::vector<int64_t>* s = p.seq == 0 ? &a : b;
        if (!s) continue;
        ids.insert(ids.end(), s->begin(), s->end());
        types.insert(types.end(), s->size(), p.type_id);
      }
    }
  }

  int64_t pair_id(const json& v, const std::string& path) {
    if (!v.is_array() || v.size() != 2 || !v[0].is_string()) bad_field(path, "expected [token, id]");
    int64_t id = get_int(v[1], path + "[1]");
    if (id < 0 || id >= vocab_) bad_field(path, "id " + std::to_string(id) + " outside the vocabulary");
    return id;
  }

  std::vector<TemplatePiece> read_template(const json& t, const json& specials, const std::string& path) {
    std::vector<TemplatePiece> out;
    if (!t.is_array()) bad_field(path, std::string("expected an array, got ") + t.type_name());
    for (size_t i = 0; i < t.size(); ++i) {
      std::string p = path + "[" + std::to_string(i) + "]";
      const json& e = t[i];
      if (has(e, "SpecialToken")) {
        std::string name = get_str(e["SpecialToken"], "id", p + ".SpecialToken");
        int64_t ty = opt_int(e["SpecialToken"], "type_id", p + ".SpecialToken", 0);
        TemplatePiece tp{true, {}, 0, ty};
        if (!specials.is_object() || !specials.contains(name))
          bad_field(p, "special token '" + name + "' is not in special_tokens");
        const json& ids = need_array(specials[name], "ids", path + ".special_tokens." + name);
        for (size_t k = 0; k < ids.size(); ++k) {
          int64_t id = get_int(ids[k], path + ".special_tokens." + name + ".ids");
          if (id < 0 || id >= vocab_) bad_field(p, "special token id out of range");
          tp.ids.push_back(id);
        }
        out.push_back(tp);
      } else if (has(e, "Sequence")) {
        std::string sid = get_str(e["Sequence"], "id", p + ".Sequence");
        if (sid != "A" && sid != "B") bad_field(p + ".Sequence.id", "expected A or B");
        out.push_back({false, {}, sid == "A" ? 0 : 1, opt_int(e["Sequence"], "type_id", p + ".Sequence", 0)});
      } else {
        bad_field(p, "expected SpecialToken or Sequence");
      }
    }
    return out;
  }

  void read_post(const json& j, const std::string& path) {
    std::string t = type_of(j, path);
    if (t == "Sequence") {
      const json& a = need_array(j, "processors", path);
      for (size_t i = 0; i < a.size(); ++i) {
        if (has_post_) break;  // only the first processor that adds tokens is applied
        read_post(a[i], path + ".processors[" + std::to_string(i) + "]");
      }
      return;
    }
    if (t == "ByteLevel") return;
    if (t == "TemplateProcessing") {
      const json& sp = has(j, "special_tokens") ? j["special_tokens"] : json::object();
      single_ = read_template(need(j, "single", path), sp, path + ".single");
      if (has(j, "pair")) pair_ = read_template(j["pair"], sp, path + ".pair");
      has_post_ = true;
      return;
    }
    if (t == "BertProcessing" || t == "RobertaProcessing") {
      int64_t sep = pair_id(need(j, "sep", path), path + ".sep");
      int64_t cls = pair_id(need(j, "cls", path), path + ".cls");
      single_ = {{true, {cls}, 0, 0}, {false, {}, 0, 0}, {true, {sep}, 0, 0}};
      if (t == "BertProcessing")
        pair_ = {{true, {cls}, 0, 0}, {false, {}, 0, 0}, {true, {sep}, 0, 0}, {false, {}, 1, 1}, {true, {sep}, 0, 1}};
      else
        pair_ = {{true, {cls}, 0, 0}, {false, {}, 0, 0}, {true, {sep, sep}, 0, 0}, {false, {}, 1, 0}, {true, {sep}, 0, 0}};
      bert_like_ = true;
      has_post_ = true;
      return;
    }
    bad_field(path + ".type", "unsupported post_processor '" + t + "'");
  }

  std::unique_ptr<Model> model_;
  Normalizer normalizer_;
  PreTok pretok_;
  Decoder decoder_;
  std::vector<AddedToken> added_, added_sorted_;
  std::unordered_map<int64_t, size_t> added_by_id_;
  std::unordered_map<std::string, int64_t> added_by_content_;
  std::vector<int64_t> special_ids_;
  std::vector<TemplatePiece> single_, pair_;
  bool has_post_ = false, bert_like_ = false;
  int64_t vocab_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> make_hf(const json& j, const std::string& where, const SpecialConfig& cfg) {
  return with_context(where, [&]() -> std::unique_ptr<Tokenizer> {
    auto t = std::make_unique<HfTokenizer>(j, where, cfg);
    if (has(j, "added_tokens") && t->vocab_size() == 0) fail("empty vocabulary");
    return t;
  });
}

json gpt2_files_to_json(const std::string& vocab_json, const std::string& merges_txt) {
  json vocab = read_json(vocab_json);
  if (!vocab.is_object()) fail(vocab_json, ": expected a JSON object {token: id}");
  std::string m = read_file(merges_txt);
  json merges = json::array();
  size_t i = 0, line = 0;
  while (i < m.size()) {
    size_t e = m.find('\n', i);
    if (e == std::string::npos) e = m.size();
    std::string l = m.substr(i, e - i);
    if (!l.empty() && l.back() == '\r') l.pop_back();
    ++line;
    i = e + 1;
    if (l.empty() || (line == 1 && l.rfind("#version", 0) == 0)) continue;
    merges.push_back(l);
  }
  json added = json::array();
  auto add = [&](const char* t, bool lstrip) {
    if (vocab.contains(t) && vocab[t].is_number_integer())
      added.push_back({{"id", vocab[t]}, {"content", t}, {"special", true}, {"lstrip", lstrip}});
  };
  // RoBERTa's vocab.json has <s> and </s>: transformers' RobertaConverter adds its specials
  // (<mask> strips the space before it) and the <s> A </s></s> B </s> template.
  const bool roberta = vocab.contains("<s>") && vocab.contains("</s>") && vocab["<s>"].is_number_integer() &&
                       vocab["</s>"].is_number_integer();
  for (const char* t : {"<|endoftext|>", "<s>", "<pad>", "</s>", "<unk>"}) add(t, false);
  add("<mask>", true);
  json post = {{"type", "ByteLevel"}};
  if (roberta)
    post = {{"type", "RobertaProcessing"}, {"sep", json::array({"</s>", vocab["</s>"]})}, {"cls", json::array({"<s>", vocab["<s>"]})}};
  return {{"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
          {"post_processor", post},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
}

json bert_vocab_to_json(const std::string& vocab_txt, bool lowercase) {
  std::string s = read_file(vocab_txt);
  json vocab = json::object();
  size_t i = 0;
  int64_t id = 0;
  while (i < s.size()) {
    size_t e = s.find('\n', i);
    if (e == std::string::npos) e = s.size();
    std::string l = s.substr(i, e - i);
    if (!l.empty() && l.back() == '\r') l.pop_back();
    if (utf8_invalid_at(l) != std::string::npos) fail(vocab_txt, ": line ", id + 1, ": invalid UTF-8");
    if (!vocab.contains(l)) vocab[l] = id;
    ++id;
    i = e + 1;
  }
  PEFT_CHECK(vocab.contains("[UNK]"), vocab_txt, ": no [UNK] token in the vocabulary");
  json added = json::array();
  for (const char* sp : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
    if (vocab.contains(sp)) added.push_back({{"id", vocab[sp]}, {"content", sp}, {"special", true}});
  json j = {{"added_tokens", added},
            {"normalizer",
             {{"type", "BertNormalizer"}, {"clean_text", true}, {"handle_chinese_chars", true},
              {"strip_accents", nullptr}, {"lowercase", lowercase}}},
            {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
            {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
            {"model",
             {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"continuing_subword_prefix", "##"},
              {"max_input_chars_per_word", 100}, {"vocab", vocab}}}};
  if (vocab.contains("[CLS]") && vocab.contains("[SEP]"))
    j["post_processor"] = {{"type", "BertProcessing"},
                           {"sep", json::array({"[SEP]", vocab["[SEP]"]})},
                           {"cls", json::array({"[CLS]", vocab["[CLS]"]})}};
  return j;
}

}  // namespace peft::tok
