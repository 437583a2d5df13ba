// tokenizer.json "pre_tokenizer": splits a normalized segment into words (tokenizers'
// pre_tokenizers module: Sequence, ByteLevel, Metaspace, BertPreTokenizer, WhitespaceSplit,
// Whitespace, Digits, Punctuation, Split). The Split regexes of GPT-2, cl100k / Llama-3 and Qwen2
// are recognised by their pattern text and run as equivalent hand-written splitters.
#include <functional>
#include <string>
#include <vector>

#include "tokenizer/hf_internal.h"
#include "tokenizer/unicode.h"

namespace peft::tok::hf {
namespace {

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
// Helpers of the pre-tokenizers.

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

}  // namespace

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

}  // namespace peft::tok::hf
