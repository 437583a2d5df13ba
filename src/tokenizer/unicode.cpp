#include "tokenizer/unicode.h"

#include <algorithm>
#include <utility>

#include "peft/error.h"

namespace peft::tok {
namespace {
struct UniRange {
  uint32_t lo, hi;
  char c0, c1;
};
struct DecompEntry {
  uint32_t cp;
  uint32_t d[4];
};
#include "tokenizer/unicode_tables.inc"

const UniRange* find_range(uint32_t cp) {
  const UniRange* b = std::begin(kUniRanges);
  const UniRange* e = std::end(kUniRanges);
  auto it = std::upper_bound(b, e, cp, [](uint32_t v, const UniRange& r) { return v < r.lo; });
  if (it == b) return nullptr;
  --it;
  return (cp >= it->lo && cp <= it->hi) ? it : nullptr;
}
}  // namespace

int utf8_len(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;
}

// Decodes one code point at s[i]; returns its length or 0 when invalid.
static size_t decode_one(const std::string& s, size_t i, uint32_t* cp) {
  unsigned char c = s[i];
  size_t n = s.size();
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  int len;
  uint32_t v;
  if ((c >> 5) == 0x6) {
    len = 2;
    v = c & 0x1F;
  } else if ((c >> 4) == 0xE) {
    len = 3;
    v = c & 0x0F;
  } else if ((c >> 3) == 0x1E) {
    len = 4;
    v = c & 0x07;
  } else {
    return 0;
  }
  if (i + len > n) return 0;
  for (int k = 1; k < len; ++k) {
    unsigned char d = s[i + k];
    if ((d & 0xC0) != 0x80) return 0;
    v = (v << 6) | (d & 0x3F);
  }
  if ((len == 2 && v < 0x80) || (len == 3 && v < 0x800) || (len == 4 && v < 0x10000)) return 0;
  if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return len;
}

size_t utf8_invalid_at(const std::string& s) {
  size_t i = 0;
  uint32_t cp;
  while (i < s.size()) {
    size_t l = decode_one(s, i, &cp);
    if (!l) return i;
    i += l;
  }
  return std::string::npos;
}

std::vector<uint32_t> utf8_decode(const std::string& s, const char* what) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp;
    size_t l = decode_one(s, i, &cp);
    if (!l) fail(what, ": invalid UTF-8 at byte ", i);
    out.push_back(cp);
    i += l;
  }
  return out;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

std::string utf8_encode(const std::vector<uint32_t>& cps) {
  std::string s;
  for (uint32_t c : cps) utf8_append(s, c);
  return s;
}

size_t utf8_incomplete_tail(const std::string& s) {
  // Look back at most 3 bytes for a lead byte whose sequence runs past the end.
  size_t n = s.size();
  for (size_t k = 1; k <= 3 && k <= n; ++k) {
    unsigned char c = s[n - k];
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    int len = utf8_len(c);
    if (len > 1 && size_t(len) > k) return k;
    return 0;
  }
  return 0;
}

std::string utf8_lossy(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp;
    size_t l = decode_one(s, i, &cp);
    if (!l) {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    out.append(s, i, l);
    i += l;
  }
  return out;
}

const char* category(uint32_t cp) {
  static thread_local char buf[3];
  const UniRange* r = find_range(cp);
  if (!r) return "Cn";
  buf[0] = r->c0;
  buf[1] = r->c1;
  buf[2] = 0;
  return buf;
}

bool is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  const UniRange* r = find_range(cp);
  return r && r->c0 == 'L';
}
bool is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  const UniRange* r = find_range(cp);
  return r && r->c0 == 'N';
}
bool is_mark_nonspacing(uint32_t cp) {
  const UniRange* r = find_range(cp);
  return r && r->c0 == 'M' && r->c1 == 'n';
}
bool is_space(uint32_t cp) {
  return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}
bool is_punct(uint32_t cp) {
  const UniRange* r = find_range(cp);
  return r && r->c0 == 'P';
}
bool is_bert_punct(uint32_t cp) {
  if ((cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
      (cp >= 123 && cp <= 126))
    return true;
  return is_punct(cp);
}
bool is_bert_whitespace(uint32_t cp) {
  if (cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r') return true;
  const UniRange* r = find_range(cp);
  return r && r->c0 == 'Z' && r->c1 == 's';
}
bool is_bert_control(uint32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  const UniRange* r = find_range(cp);
  return r && r->c0 == 'C' && (r->c1 == 'c' || r->c1 == 'f');
}
bool is_cjk(uint32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
         (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
         (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}
uint32_t to_lower(uint32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  auto b = std::begin(kLowerMap), e = std::end(kLowerMap);
  auto it = std::lower_bound(b, e, std::make_pair(cp, uint32_t(0)));
  return (it != e && it->first == cp) ? it->second : cp;
}
void nfd_append(std::vector<uint32_t>& out, uint32_t cp) {
  if (cp < 0xC0) {
    out.push_back(cp);
    return;
  }
  if (cp >= 0xAC00 && cp <= 0xD7A3) {  // Hangul syllables: algorithmic decomposition
    uint32_t s = cp - 0xAC00;
    out.push_back(0x1100 + s / 588);
    out.push_back(0x1161 + (s % 588) / 28);
    if (s % 28) out.push_back(0x11A7 + s % 28);
    return;
  }
  auto b = std::begin(kDecomp), e = std::end(kDecomp);
  auto it = std::lower_bound(b, e, cp, [](const DecompEntry& d, uint32_t v) { return d.cp < v; });
  if (it == e || it->cp != cp) {
    out.push_back(cp);
    return;
  }
  for (uint32_t d : it->d)
    if (d) out.push_back(d);
}

}  // namespace peft::tok
