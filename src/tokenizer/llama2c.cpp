// llama2.c tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length,
// bytes. Encoding and decoding follow llama2.c's run.c exactly (see encode()/decode() there).
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unordered_map>

#include "peft/io.h"
#include "tokenizer/internal.h"
#include "tokenizer/merge.h"
#include "tokenizer/unicode.h"

namespace peft::tok {
namespace {

bool is_byte_piece(const std::string& p) {
  return p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>' && std::isxdigit((unsigned char)p[3]) &&
         std::isxdigit((unsigned char)p[4]);
}

struct Llama2cVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  int32_t max_token_length = 0;
};

Llama2cVocab read_llama2c(const std::string& path) {
  std::string data = read_file(path);
  Llama2cVocab v;
  size_t off = 0;
  auto rd = [&](void* dst, size_t n, const char* what) {
    PEFT_CHECK(off + n <= data.size(), "truncated llama2.c tokenizer: cannot read ", what, " of token ",
               v.pieces.size(), " at byte ", off, " (file has ", data.size(), " bytes)");
    std::memcpy(dst, data.data() + off, n);
    off += n;
  };
  rd(&v.max_token_length, 4, "max_token_length");
  PEFT_CHECK(v.max_token_length > 0 && v.max_token_length <= 1024,
             "field max_token_length: ", v.max_token_length, " is not a plausible value (1..1024)");
  while (off < data.size()) {
    float score;
    int32_t len;
    rd(&score, 4, "score");
    rd(&len, 4, "length");
    PEFT_CHECK(len >= 0 && len <= v.max_token_length, "token ", v.pieces.size(), ": length ", len,
               " outside [0, max_token_length=", v.max_token_length, "]");
    PEFT_CHECK(off + size_t(len) <= data.size(), "truncated llama2.c tokenizer: token ", v.pieces.size(),
               " needs ", len, " bytes at byte ", off);
    v.pieces.emplace_back(data.data() + off, size_t(len));
    off += len;
    v.scores.push_back(std::isnan(score) ? -INFINITY : score);
  }
  PEFT_CHECK(v.pieces.size() >= 3,
             "llama2.c tokenizer has only ", v.pieces.size(), " tokens (needs <unk>, <s>, </s>)");
  return v;
}

class Llama2cTokenizer : public Tokenizer {
 public:
  explicit Llama2cTokenizer(Llama2cVocab v) : v_(std::move(v)) {
    for (size_t i = 0; i < v_.pieces.size(); ++i) lookup_.emplace(v_.pieces[i], int64_t(i));
    unk_id = 0;
    bos_id = 1;
    eos_id = 2;
  }

  int64_t vocab_size() const override { return int64_t(v_.pieces.size()); }

  std::string id_to_token(int64_t id) const override {
    check_id(id, vocab_size(), "id_to_token");
    if (id == 1 && v_.pieces[1] == "\n<s>\n") return "<s>";
    if (id == 2 && v_.pieces[2] == "\n</s>\n") return "</s>";
    return v_.pieces[id];
  }

  int64_t token_to_id(const std::string& tok) const override {
    if (tok == "<s>") return 1;
    if (tok == "</s>") return 2;
    auto it = lookup_.find(tok);
    return it == lookup_.end() ? -1 : it->second;
  }

  int64_t byte_id(unsigned char b) const {
    int64_t id = int64_t(b) + 3;
    PEFT_CHECK(id < vocab_size(), "llama2.c tokenizer: byte-fallback id ", id, " for byte ", int(b),
               " is outside the vocabulary (", vocab_size(), " tokens)");
    return id;
  }

  std::vector<int64_t> encode(const std::string& text, bool add_special) const override {
    size_t bad = utf8_invalid_at(text);
    PEFT_CHECK(bad == std::string::npos, "encode: invalid UTF-8 in input text at byte ", bad);
    std::vector<int64_t> toks;
    if (add_special) toks.push_back(1);
    std::vector<int64_t> body;
    if (!text.empty()) {
      auto it = lookup_.find(" ");
      body.push_back(it != lookup_.end() ? it->second : byte_id(' '));
    }
    size_t i = 0;
    while (i < text.size()) {
      size_t l = size_t(utf8_len((unsigned char)text[i]));
      std::string cp = text.substr(i, l);
      auto f = lookup_.find(cp);
      if (f != lookup_.end()) {
        body.push_back(f->second);
      } else {
        for (unsigned char b : cp) body.push_back(byte_id(b));
      }
      i += l;
    }
    // run.c: merge the pair with the highest score (leftmost on ties, strictly > -1e10).
    std::string buf;
    body = merge_greedy(body, [&](int64_t a, int64_t b, double* key, int64_t* merged) {
      buf = v_.pieces[a];
      buf += v_.pieces[b];
      auto f = lookup_.find(buf);
      if (f == lookup_.end()) return false;
      float s = v_.scores[f->second];
      if (!(s > -1e10f)) return false;
      *key = -double(s);
      *merged = f->second;
      return true;
    });
    toks.insert(toks.end(), body.begin(), body.end());
    return toks;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override {
    std::string out;
    int64_t prev = -1;
    bool first = true;  // the first text piece (sentencepiece drops its dummy-prefix space)
    for (int64_t id : ids) {
      check_id(id, vocab_size());
      if (skip_special && (id == 0 || id == 1 || id == 2)) {
        prev = id;
        continue;
      }
      std::string piece = (id == 1 || id == 2) ? id_to_token(id) : v_.pieces[id];
      // run.c strips the leading space after BOS; we also strip it from the first piece (the
      // dummy prefix encode() adds), like sentencepiece. Nowhere else: a continuation keeps it.
      if ((prev == 1 || first) && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
      first = false;
      if (is_byte_piece(piece)) {
        out += char(std::stoi(piece.substr(3, 2), nullptr, 16));
      } else {
        out += piece;
      }
      prev = id;
    }
    return out;
  }

 private:
  Llama2cVocab v_;
  std::unordered_map<std::string, int64_t> lookup_;
};


}  // namespace

std::unique_ptr<Tokenizer> make_llama2c(const std::string& path, const SpecialConfig& cfg) {
  auto t = std::make_unique<Llama2cTokenizer>(read_llama2c(path));
  apply_special_config(*t, cfg);
  return t;
}

}  // namespace peft::tok

namespace peft {

void write_tokenizer_json_from_llama2c(const std::string& bin_path, const std::string& out_dir) {
  using tok::json;
  tok::Llama2cVocab v = with_context(bin_path, [&] { return tok::read_llama2c(bin_path); });
  const std::string kSp = "\xE2\x96\x81";  // ▁
  std::vector<std::string> names(v.pieces.size());
  json vocab = json::object();
  std::unordered_map<std::string, int64_t> ids;
  for (size_t i = 0; i < v.pieces.size(); ++i) {
    std::string p = v.pieces[i];
    if (i == 0) p = "<unk>";
    if (i == 1) p = "<s>";
    if (i == 2) p = "</s>";
    if (i > 2 && !tok::is_byte_piece(p)) {
      std::string r;
      for (char c : p) {
        if (c == ' ')
          r += kSp;
        else
          r += c;
      }
      p = r;
    }
    PEFT_CHECK(tok::utf8_invalid_at(p) == std::string::npos, bin_path, ": token ", i, " is not valid UTF-8");
    names[i] = p;
    if (!ids.count(p)) {
      ids[p] = int64_t(i);
      vocab[p] = i;
    }
  }
  // Merges as Hugging Face's SentencePiece converter builds them: every split (l, r) of a
  // piece into two pieces, ordered by the merged piece's score (then its id, then l's id).
  struct M {
    float score;
    int64_t merged, l, r;
  };
  std::vector<M> merges;
  for (size_t i = 3; i < names.size(); ++i) {
    const std::string& p = names[i];
    if (tok::is_byte_piece(p) || ids[p] != int64_t(i)) continue;
    for (size_t k = 1; k < p.size(); ++k) {
      if ((p[k] & 0xC0) == 0x80) continue;
      auto a = ids.find(p.substr(0, k)), b = ids.find(p.substr(k));
      if (a == ids.end() || b == ids.end() || a->second < 3 || b->second < 3) continue;
      merges.push_back({v.scores[i], int64_t(i), a->second, b->second});
    }
  }
  std::stable_sort(merges.begin(), merges.end(), [](const M& x, const M& y) {
    if (x.score != y.score) return x.score > y.score;
    if (x.merged != y.merged) return x.merged < y.merged;
    return x.l < y.l;
  });
  json jm = json::array();
  for (const M& m : merges) jm.push_back(json::array({names[m.l], names[m.r]}));
  auto added = [&](int id, const std::string& s) {
    return json{{"id", id}, {"content", s}, {"single_word", false}, {"lstrip", false},
                {"rstrip", false}, {"normalized", false}, {"special", true}};
  };
  json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", json::array({added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")})},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         json::array({{{"type", "Prepend"}, {"prepend", kSp}},
                      {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSp}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                              {{"SpecialToken", {{"id", "<s>"}, {"type_id", 1}}}},
                              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", json::array({1})}, {"tokens", json::array({"<s>"})}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         json::array({{{"type", "Replace"}, {"pattern", {{"String", kSp}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", jm}}}};
  std::filesystem::create_directories(out_dir);
  std::string out = (std::filesystem::path(out_dir) / "tokenizer.json").string();
  write_file_atomic(out, j.dump(1));
}

}  // namespace peft
