// tokenizer.json "model": one pre-tokenized word -> ids (tokenizers' models module): BPE
// (Sennrich et al. 2016; merges applied by rank, byte fallback, unk fusing), WordPiece (greedy
// longest match first), WordLevel (whole words) and Unigram (Kudo 2018, Viterbi segmentation).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/hf_internal.h"
#include "tokenizer/merge.h"
#include "tokenizer/unicode.h"

namespace peft::tok::hf {

void Model::add_vocab(const std::string& tok, int64_t id, const std::string& path) {
  if (id < 0 || id > id_limit) bad_field(path, "token id " + std::to_string(id) + " out of range [0, " + std::to_string(id_limit) + "]");
  check_utf8(tok, path);
  if (size_t(id) >= id_to_tok.size()) id_to_tok.resize(size_t(id) + 1);
  id_to_tok[size_t(id)] = tok;
  tok_to_id[tok] = id;
}
void Model::read_dict_vocab(const json& m, const std::string& path) {
  const json& v = need(m, "vocab", path);
  if (!v.is_object()) bad_field(path + ".vocab", std::string("expected an object, got ") + v.type_name());
  id_limit = int64_t(v.size()) * 2 + 65536;
  for (auto it = v.begin(); it != v.end(); ++it)
    add_vocab(it.key(), get_int(it.value(), path + ".vocab[\"" + it.key() + "\"]"), path + ".vocab");
}
void Model::set_unk(const json& m, const std::string& path) {
  if (!has(m, "unk_token")) return;
  std::string u = get_str(m, "unk_token", path);
  unk = find(u);
  if (unk < 0) bad_field(path + ".unk_token", "'" + u + "' is not in the vocabulary");
}

namespace {

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

}  // namespace

std::unique_ptr<Model> make_model(const json& m) {
  std::string mt = has(m, "type") ? type_of(m, "model") : (has(m, "merges") ? "BPE" : "");
  if (mt == "BPE") return std::make_unique<BpeModel>(m, "model");
  if (mt == "WordPiece") return std::make_unique<WordPieceModel>(m, "model");
  if (mt == "Unigram") return std::make_unique<UnigramModel>(m, "model");
  if (mt == "WordLevel") return std::make_unique<WordLevelModel>(m, "model");
  bad_field("model.type", "unsupported model type '" + mt + "'");
}

}  // namespace peft::tok::hf
