// Internal interface of the Hugging Face tokenizer.json reader, split along the tokenizers
// library's own modules (one file each):
//   hf_common.cpp          JSON field access with paths in messages, the GPT-2 byte map
//   hf_normalizers.cpp     normalizer:      string -> string
//   hf_pre_tokenizers.cpp  pre_tokenizer:   words -> finer words (incl. the regex splitters)
//   hf_models.cpp          model:           word -> ids (BPE, WordPiece, WordLevel, Unigram)
//   hf_decoders.cpp        decoder:         token strings -> text pieces
//   hf_post_processors.cpp post_processor:  template of special tokens around sequences A / B
//   hf.cpp                 the tokenizer.json reader that assembles them (+ added tokens)
//   hf_converters.cpp      GPT-2 vocab.json+merges.txt / BERT vocab.txt -> the same JSON layout
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/internal.h"

namespace peft::tok::hf {

inline constexpr char kSp[] = "\xE2\x96\x81";  // ▁ (U+2581), SentencePiece's space

// ---- JSON access with field paths in messages (hf_common.cpp) -------------------------------
[[noreturn]] void bad_field(const std::string& path, const std::string& what);
const json& need(const json& o, const char* key, const std::string& path);
bool has(const json& o, const char* key);
std::string get_str(const json& o, const char* key, const std::string& path);
std::string opt_str(const json& o, const char* key, const std::string& path, const std::string& dflt);
bool opt_bool(const json& o, const char* key, const std::string& path, bool dflt);
int64_t get_int(const json& v, const std::string& path);
int64_t opt_int(const json& o, const char* key, const std::string& path, int64_t dflt);
double get_num(const json& v, const std::string& path);
const json& need_array(const json& o, const char* key, const std::string& path);
std::string type_of(const json& o, const std::string& path);
void check_utf8(const std::string& s, const std::string& path);
/// Replace pattern: {"String": "..."}; {"Regex": ...} only when it is a plain literal.
std::string pattern_string(const json& o, const std::string& path);
std::string replace_all(const std::string& s, const std::string& from, const std::string& to);
/// Metaspace's prepend_scheme (always|first|never), or the older add_prefix_space flag.
std::string prepend_scheme(const json& j, const std::string& path);

/// GPT-2 byte <-> unicode mapping (printable bytes map to themselves, the rest to U+0100...).
struct ByteMap {
  std::string byte_to_str[256];
  std::unordered_map<uint32_t, unsigned char> cp_to_byte;
  ByteMap();
};
const ByteMap& byte_map();

// ---- components ----------------------------------------------------------------------------
using Normalizer = std::function<std::string(const std::string&)>;
/// Splits each word further. `first` is true for the segment at text start.
using PreTok = std::function<void(std::vector<std::string>&, bool first)>;
/// Token strings -> token strings (joined at the end).
using Decoder = std::function<void(std::vector<std::string>&)>;

Normalizer make_normalizer(const json& j, const std::string& path);
PreTok make_pretok(const json& j, const std::string& path);
Decoder make_decoder(const json& j, const std::string& path);

/// A tokenization model: one pre-tokenized word -> ids, plus its vocabulary.
struct Model {
  virtual ~Model() = default;
  virtual void tokenize(const std::string& word, std::vector<int64_t>& out) const = 0;
  std::vector<std::string> id_to_tok;  // "" for holes
  std::unordered_map<std::string, int64_t> tok_to_id;
  int64_t unk = -1;
  int64_t id_limit = 100000000;  // ids may leave holes, but not absurdly many

  void add_vocab(const std::string& tok, int64_t id, const std::string& path);
  int64_t find(const std::string& t) const {
    auto it = tok_to_id.find(t);
    return it == tok_to_id.end() ? -1 : it->second;
  }
  void read_dict_vocab(const json& m, const std::string& path);
  void set_unk(const json& m, const std::string& path);
};
/// The model object `m` (at field path "model"): BPE (also when "type" is absent but "merges"
/// present), WordPiece, Unigram, WordLevel.
std::unique_ptr<Model> make_model(const json& m);

/// Post-processing: special tokens placed around sequence A (and B for pairs).
struct TemplatePiece {
  bool special;
  std::vector<int64_t> ids;  // special token ids
  int seq;                   // 0 = A, 1 = B
  int64_t type_id;
};
struct PostProcessor {
  std::vector<TemplatePiece> single, pair;
  bool active = false;     // a processor that adds tokens was read
  bool bert_like = false;  // BertProcessing / RobertaProcessing
  /// Reads post_processor `j`; ids must lie in [0, vocab).
  void read(const json& j, const std::string& path, int64_t vocab);
  /// Appends tpl applied to a (and b, when non-null) to ids / types.
  static void apply(const std::vector<TemplatePiece>& tpl, const std::vector<int64_t>& a,
                    const std::vector<int64_t>* b, std::vector<int64_t>& ids, std::vector<int64_t>& types);
};

}  // namespace peft::tok::hf
