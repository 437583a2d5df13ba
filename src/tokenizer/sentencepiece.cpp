// SentencePiece .model files, parsed and encoded here (no libsentencepiece: its bundled
// protobuf 3.14 clashes with LibTorch's libprotobuf 3.21 in one process and crashes at load).
// ModelProto wire format: pieces=1 {piece=1, score=2, type=3}, trainer_spec=2 {model_type=3,
// byte_fallback=35, unk_id=40, bos_id=41, eos_id=42, pad_id=43}, normalizer_spec=3 {name=1,
// add_dummy_prefix=3, remove_extra_whitespaces=4, escape_whitespaces=5}.
// Encoding follows sentencepiece's bpe_model.cc (merge the adjacent pair whose concatenation
// is a piece with the highest score, leftmost first) and unigram_model.cc (Viterbi, unknown
// characters scored min_score - 10, consecutive unknowns fused). Normalization: only the
// "identity" rule set is exact; other rule sets (nmt_nfkc, precompiled charsmaps) are
// approximated by identity.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "tokenizer/internal.h"
#include "tokenizer/merge.h"
#include "tokenizer/unicode.h"

namespace peft::tok {
namespace {

enum PieceType { NORMAL = 1, UNKNOWN = 2, CONTROL = 3, USER_DEFINED = 4, UNUSED = 5, BYTE = 6 };

struct SpmModel {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int> types;
  int model_type = 1;  // 1 unigram, 2 bpe, 3 word, 4 char
  bool byte_fallback = false;
  int64_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;
  std::string norm_name;
  bool add_dummy_prefix = true, remove_extra_ws = true, escape_ws = true;
};

struct Reader {
  const unsigned char* p;
  const unsigned char* end;
  const char* what;
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      PEFT_CHECK(p < end, "truncated protobuf varint in ", what);
      unsigned char b = *p++;
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("malformed protobuf varint in ", what);
  }
  Reader sub() {
    uint64_t n = varint();
    PEFT_CHECK(n <= uint64_t(end - p), "truncated protobuf field in ", what);
    Reader r{p, p + n, what};
    p += n;
    return r;
  }
  void skip(int wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1: PEFT_CHECK(end - p >= 8, "truncated protobuf in ", what); p += 8; break;
      case 2: sub(); break;
      case 5: PEFT_CHECK(end - p >= 4, "truncated protobuf in ", what); p += 4; break;
      default: fail("bad protobuf wire type ", wire, " in ", what);
    }
  }
  float fixed32f(int wire) {
    PEFT_CHECK(wire == 5 && end - p >= 4, "bad float field in ", what);
    float f;
    std::memcpy(&f, p, 4);
    p += 4;
    return f;
  }
  bool done() const { return p >= end; }
};

SpmModel parse_model(const std::string& data) {
  SpmModel m;
  Reader r{(const unsigned char*)data.data(), (const unsigned char*)data.data() + data.size(), "ModelProto"};
  bool have_ids = false;
  while (!r.done()) {
    uint64_t tag = r.varint();
    int field = int(tag >> 3), wire = int(tag & 7);
    if (field == 1 && wire == 2) {
      Reader s = r.sub();
      s.what = "ModelProto.pieces";
      std::string piece;
      float score = 0;
      int type = NORMAL;
      while (!s.done()) {
        uint64_t t = s.varint();
        int f = int(t >> 3), w = int(t & 7);
        if (f == 1 && w == 2) {
          Reader q = s.sub();
          piece.assign((const char*)q.p, size_t(q.end - q.p));
        } else if (f == 2) {
          score = s.fixed32f(w);
        } else if (f == 3 && w == 0) {
          type = int(s.varint());
        } else {
          s.skip(w);
        }
      }
      PEFT_CHECK(utf8_invalid_at(piece) == std::string::npos, "piece ", m.pieces.size(), " is not valid UTF-8");
      PEFT_CHECK(type >= 1 && type <= 6, "piece ", m.pieces.size(), ": unknown type ", type);
      m.pieces.push_back(piece);
      m.scores.push_back(std::isfinite(score) ? score : 0.f);
      m.types.push_back(type);
    } else if (field == 2 && wire == 2) {
      Reader s = r.sub();
      s.what = "ModelProto.trainer_spec";
      while (!s.done()) {
        uint64_t t = s.varint();
        int f = int(t >> 3), w = int(t & 7);
        if (w != 0) {
          s.skip(w);
          continue;
        }
        int64_t v = int64_t(int32_t(s.varint()));
        if (f == 3) m.model_type = int(v);
        if (f == 35) m.byte_fallback = v != 0;
        if (f == 40) m.unk_id = v, have_ids = true;
        if (f == 41) m.bos_id = v;
        if (f == 42) m.eos_id = v;
        if (f == 43) m.pad_id = v;
      }
    } else if (field == 3 && wire == 2) {
      Reader s = r.sub();
      s.what = "ModelProto.normalizer_spec";
      while (!s.done()) {
        uint64_t t = s.varint();
        int f = int(t >> 3), w = int(t & 7);
        if (f == 1 && w == 2) {
          Reader q = s.sub();
          m.norm_name.assign((const char*)q.p, size_t(q.end - q.p));
        } else if (w == 0 && (f == 3 || f == 4 || f == 5)) {
          bool v = s.varint() != 0;
          if (f == 3) m.add_dummy_prefix = v;
          if (f == 4) m.remove_extra_ws = v;
          if (f == 5) m.escape_ws = v;
        } else {
          s.skip(w);
        }
      }
    } else {
      r.skip(wire);
    }
  }
  (void)have_ids;
  PEFT_CHECK(!m.pieces.empty(), "no pieces (not a SentencePiece model?)");
  PEFT_CHECK(m.model_type >= 1 && m.model_type <= 4, "trainer_spec.model_type: unknown value ", m.model_type);
  int64_t n = int64_t(m.pieces.size());
  for (int64_t* id : {&m.unk_id, &m.bos_id, &m.eos_id, &m.pad_id})
    if (*id >= n) *id = -1;
  return m;
}

const std::string kSp = "\xE2\x96\x81";  // ▁

class SpmTokenizer : public Tokenizer {
 public:
  SpmTokenizer(SpmModel m, const SpecialConfig& cfg) : m_(std::move(m)) {
    std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
    for (size_t i = 0; i < m_.pieces.size(); ++i) {
      lookup_all_.emplace(m_.pieces[i], int64_t(i));
      int t = m_.types[i];
      if (t == NORMAL || t == USER_DEFINED) {
        lookup_.emplace(m_.pieces[i], int64_t(i));
        max_len_ = std::max(max_len_, m_.pieces[i].size());
      }
      if (t == BYTE) {
        unsigned char b;
        if (parse_byte(m_.pieces[i], &b)) byte_ids_[b] = int64_t(i);
      }
    }
    min_score_ = 0;
    for (size_t i = 0; i < m_.pieces.size(); ++i)
      if (m_.types[i] == NORMAL) min_score_ = std::min(min_score_, double(m_.scores[i]));
    bos_id = m_.bos_id;
    eos_id = m_.eos_id;
    pad_id = m_.pad_id;
    unk_id = m_.unk_id;
    add_bos_ = cfg.add_bos.value_or(true);
    add_eos_ = cfg.add_eos.value_or(false);
  }

  static bool parse_byte(const std::string& p, unsigned char* b) {
    if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return false;
    if (!std::isxdigit((unsigned char)p[3]) || !std::isxdigit((unsigned char)p[4])) return false;
    std::string hex = p.substr(3, 2);
    long v = std::strtol(hex.c_str(), nullptr, 16);
    *b = (unsigned char)v;
    return true;
  }

  int64_t vocab_size() const override { return int64_t(m_.pieces.size()); }
  std::string id_to_token(int64_t id) const override {
    check_id(id, vocab_size(), "id_to_token");
    return m_.pieces[size_t(id)];
  }
  int64_t token_to_id(const std::string& tok) const override {
    auto it = lookup_all_.find(tok);
    return it == lookup_all_.end() ? -1 : it->second;
  }

  std::string normalize(const std::string& text) const {
    std::string s = text;
    if (m_.remove_extra_ws) {
      std::string o;
      bool space = false;
      for (char c : s) {
        if (c == ' ') {
          space = !o.empty();
          continue;
        }
        if (space) o += ' ';
        space = false;
        o += c;
      }
      s = o;
    }
    if (s.empty()) return s;
    if (m_.add_dummy_prefix) s = " " + s;
    if (m_.escape_ws) {
      std::string o;
      for (char c : s) {
        if (c == ' ')
          o += kSp;
        else
          o += c;
      }
      s = o;
    }
    return s;
  }

  void push_unknown(const std::string& s, size_t b, size_t e, std::vector<int64_t>& out, bool& last_unk) const {
    if (m_.byte_fallback) {
      bool all = true;
      for (size_t q = b; q < e; ++q)
        if (byte_ids_[(unsigned char)s[q]] < 0) all = false;
      if (all) {
        for (size_t q = b; q < e; ++q) out.push_back(byte_ids_[(unsigned char)s[q]]);
        last_unk = false;
        return;
      }
    }
    PEFT_CHECK(unk_id >= 0, "encode: character outside the vocabulary and the model has no <unk>");
    if (!last_unk) out.push_back(unk_id);
    last_unk = true;
  }

  void encode_bpe(const std::string& s, std::vector<int64_t>& out) const {
    // Symbols: one per character; characters that are not pieces stay "unknown" (-1 - index).
    std::vector<int64_t> syms;
    std::vector<std::pair<size_t, size_t>> spans;
    size_t i = 0;
    while (i < s.size()) {
      size_t l = std::min(size_t(utf8_len((unsigned char)s[i])), s.size() - i);
      auto it = lookup_.find(s.substr(i, l));
      syms.push_back(it != lookup_.end() ? it->second : -1 - int64_t(spans.size()));
      spans.push_back({i, i + l});
      i += l;
    }
    std::string buf;
    syms = merge_greedy(syms, [&](int64_t a, int64_t b, double* key, int64_t* merged) {
      if (a < 0 || b < 0) return false;
      buf = m_.pieces[a];
      buf += m_.pieces[b];
      auto f = lookup_.find(buf);
      if (f == lookup_.end()) return false;
      *key = -double(m_.scores[f->second]);
      *merged = f->second;
      return true;
    });
    bool last_unk = false;
    for (int64_t id : syms) {
      if (id >= 0) {
        out.push_back(id);
        last_unk = false;
      } else {
        auto sp = spans[size_t(-1 - id)];
        push_unknown(s, sp.first, sp.second, out, last_unk);
      }
    }
  }

  void encode_unigram(const std::string& s, std::vector<int64_t>& out) const {
    size_t n = s.size();
    double unk_score = min_score_ - 10.0;
    auto path = tok::unigram_viterbi(s, max_len_, unk_score, [&](const std::string& piece, int64_t* id, double* sc) {
      auto it = lookup_.find(piece);
      if (it == lookup_.end()) return false;
      *id = it->second;
      *sc = m_.types[it->second] == USER_DEFINED ? 0.0 : double(m_.scores[it->second]);
      return true;
    });
    bool last_unk = false;
    for (size_t k = 0; k < path.size(); ++k) {
      if (path[k].second >= 0) {
        out.push_back(path[k].second);
        last_unk = false;
      } else {
        size_t e = k + 1 < path.size() ? path[k + 1].first : n;
        push_unknown(s, path[k].first, e, out, last_unk);
      }
    }
  }

  std::vector<int64_t> encode(const std::string& text, bool add_special) const override {
    size_t bad = utf8_invalid_at(text);
    PEFT_CHECK(bad == std::string::npos, "encode: invalid UTF-8 in input text at byte ", bad);
    std::vector<int64_t> out;
    if (add_special && add_bos_ && bos_id >= 0) out.push_back(bos_id);
    std::string s = normalize(text);
    if (m_.model_type == 2 || m_.model_type == 4) {
      encode_bpe(s, out);
    } else if (m_.model_type == 1) {
      encode_unigram(s, out);
    } else {  // WORD: split before each ▁
      size_t i = 0;
      while (i < s.size()) {
        size_t j = s.find(kSp, i + 1);
        if (j == std::string::npos) j = s.size();
        auto it = lookup_.find(s.substr(i, j - i));
        bool last_unk = false;
        if (it != lookup_.end())
          out.push_back(it->second);
        else
          push_unknown(s, i, j, out, last_unk);
        i = j;
      }
    }
    if (add_special && add_eos_ && eos_id >= 0) out.push_back(eos_id);
    return out;
  }

  std::vector<int64_t> encode_pair(const std::string& a, const std::string& b,
                                   std::vector<int64_t>* types) const override {
    auto ia = encode(a, true), ib = encode(b, true);
    if (types) {
      types->assign(ia.size(), 0);
      types->insert(types->end(), ib.size(), 1);
    }
    ia.insert(ia.end(), ib.begin(), ib.end());
    return ia;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override {
    std::string out;
    bool at_start = true;  // strip the dummy-prefix space at the start of each text run
    for (int64_t id : ids) {
      check_id(id, vocab_size());
      int t = m_.types[size_t(id)];
      const std::string& p = m_.pieces[size_t(id)];
      if (t == CONTROL) {
        if (!skip_special) out += p;
        at_start = true;
        continue;
      }
      std::string piece;
      unsigned char b;
      if (t == BYTE && parse_byte(p, &b)) {
        piece = std::string(1, char(b));
      } else if (t == UNKNOWN) {
        piece = " \xE2\x81\x87 ";  // " ⁇ " like sentencepiece
      } else {
        for (size_t k = 0; k < p.size();) {
          if (p.compare(k, kSp.size(), kSp) == 0) {
            piece += ' ';
            k += kSp.size();
          } else {
            piece += p[k++];
          }
        }
      }
      if (at_start && m_.add_dummy_prefix && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
      at_start = false;
      out += piece;
    }
    return utf8_lossy(out);
  }

 private:
  SpmModel m_;
  std::unordered_map<std::string, int64_t> lookup_, lookup_all_;
  int64_t byte_ids_[256] = {};
  size_t max_len_ = 1;
  double min_score_ = 0;
  bool add_bos_ = true, add_eos_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece(const std::string& path, const SpecialConfig& cfg) {
  SpmModel m = with_context(path, [&] { return parse_model(read_file(path)); });
  auto t = std::make_unique<SpmTokenizer>(std::move(m), cfg);
  apply_special_config(*t, cfg);
  return t;
}

}  // namespace peft::tok
