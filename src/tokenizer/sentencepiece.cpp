// SentencePiece .model files through libsentencepiece.
#include <sentencepiece_processor.h>

#include "tokenizer/internal.h"
#include "tokenizer/unicode.h"

namespace peft::tok {
namespace {

class SpmTokenizer : public Tokenizer {
 public:
  SpmTokenizer(const std::string& path, const SpecialConfig& cfg) : path_(path) {
    auto st = sp_.Load(path);
    PEFT_CHECK(st.ok(), "cannot load SentencePiece model: ", st.ToString());
    PEFT_CHECK(sp_.GetPieceSize() > 0, "SentencePiece model has no pieces");
    bos_id = sp_.bos_id();
    eos_id = sp_.eos_id();
    pad_id = sp_.pad_id();
    unk_id = sp_.unk_id();
    int n = sp_.GetPieceSize();
    for (int64_t* p : {&bos_id, &eos_id, &pad_id, &unk_id})
      if (*p >= n) *p = -1;
    add_bos_ = cfg.add_bos.value_or(true);
    add_eos_ = cfg.add_eos.value_or(false);
  }

  int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::string id_to_token(int64_t id) const override {
    check_id(id, vocab_size(), "id_to_token");
    return sp_.IdToPiece(int(id));
  }
  int64_t token_to_id(const std::string& tok) const override {
    int id = sp_.PieceToId(tok);
    if (id < 0 || id >= sp_.GetPieceSize() || sp_.IdToPiece(id) != tok) return -1;
    return id;
  }

  std::vector<int64_t> encode(const std::string& text, bool add_special) const override {
    size_t bad = utf8_invalid_at(text);
    PEFT_CHECK(bad == std::string::npos, "encode: invalid UTF-8 in input text at byte ", bad);
    std::vector<int> ids;
    auto st = sp_.Encode(text, &ids);
    PEFT_CHECK(st.ok(), path_, ": SentencePiece encode failed: ", st.ToString());
    std::vector<int64_t> out;
    if (add_special && add_bos_ && bos_id >= 0) out.push_back(bos_id);
    out.insert(out.end(), ids.begin(), ids.end());
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
    std::vector<int> run;
    auto flush = [&] {
      if (run.empty()) return;
      std::string s;
      auto st = sp_.Decode(run, &s);
      PEFT_CHECK(st.ok(), path_, ": SentencePiece decode failed: ", st.ToString());
      out += s;
      run.clear();
    };
    for (int64_t id : ids) {
      check_id(id, vocab_size());
      if (sp_.IsControl(int(id))) {
        flush();
        if (!skip_special) out += sp_.IdToPiece(int(id));
        continue;
      }
      run.push_back(int(id));
    }
    flush();
    return out;
  }

 private:
  std::string path_;
  sentencepiece::SentencePieceProcessor sp_;
  bool add_bos_ = true, add_eos_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece(const std::string& path, const SpecialConfig& cfg) {
  auto t = std::make_unique<SpmTokenizer>(path, cfg);
  apply_special_config(*t, cfg);
  return t;
}

}  // namespace peft::tok
