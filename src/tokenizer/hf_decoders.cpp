// tokenizer.json "decoder": token strings -> text pieces, joined at the end (tokenizers' decoders
// module: Sequence, ByteLevel, Metaspace, WordPiece, ByteFallback, Fuse, Strip, Replace,
// BPEDecoder).
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/hf_internal.h"
#include "tokenizer/unicode.h"

namespace peft::tok::hf {
namespace {

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
}  // namespace

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

}  // namespace peft::tok::hf
