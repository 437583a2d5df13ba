// Tokenizers: Hugging Face tokenizer.json (BPE / WordPiece / Unigram), SentencePiece .model,
// GPT-2 vocab.json+merges.txt, BERT vocab.txt and llama2.c tokenizer.bin.
//
//   auto tok = peft::load_tokenizer("models/llama");      // picks the file by preference
//   std::vector<int64_t> ids = tok->encode("Hello");      // BOS etc. as the config says
//   std::string text = tok->decode(ids);                   // specials dropped
//
// Every failure (missing/corrupt file, unsupported component, invalid UTF-8 input) is a
// peft::Error naming the file and field.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace peft {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// Text -> ids. add_special: add BOS/EOS/[CLS]/[SEP] as the tokenizer's config says
  /// (tokenizer_config.json add_bos_token/add_eos_token, post_processor in tokenizer.json,
  /// llama2.c: BOS only). Throws peft::Error on invalid UTF-8.
  virtual std::vector<int64_t> encode(const std::string& text, bool add_special = true) const = 0;
  /// Sentence pair (BERT/RoBERTa style); token_type_ids filled when non-null.
  /// Default: peft::Error "not supported".
  virtual std::vector<int64_t> encode_pair(const std::string& a, const std::string& b,
                                           std::vector<int64_t>* token_type_ids = nullptr) const;
  /// ids -> text; skip_special drops BOS/EOS/PAD/etc. Out-of-range ids: peft::Error.
  virtual std::string decode(const std::vector<int64_t>& ids, bool skip_special = true) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual std::string id_to_token(int64_t id) const = 0;
  virtual int64_t token_to_id(const std::string& tok) const = 0;  // -1 if absent
  int64_t bos_id = -1, eos_id = -1, pad_id = -1, unk_id = -1;  // -1 when the tokenizer has none
  std::string chat_template;  // from tokenizer_config.json, empty if none
};

/// Loads the tokenizer of a model folder, in this order of preference: tokenizer.json (HF fast
/// tokenizer), tokenizer.model (SentencePiece; also any *.model), vocab.json+merges.txt (GPT-2
/// BPE), vocab.txt (WordPiece), tokenizer.bin / tok*.bin (llama2.c). Reads
/// tokenizer_config.json / special_tokens_map.json / config.json (bos/eos/pad ids) when present.
/// Errors name the file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);
/// Loads one specific file by its type (by extension/name): *.json (tokenizer.json, or
/// vocab.json with merges.txt beside it), *.model, *.txt (vocab.txt), *.bin (llama2.c).
/// Config files next to it are read as for load_tokenizer.
std::unique_ptr<Tokenizer> load_tokenizer_file(const std::string& path);

/// Writes `out_dir`/tokenizer.json (HF format: SentencePiece-style BPE with byte fallback,
/// Llama layout, merges derived from the piece scores) from a llama2.c tokenizer.bin.
/// Encodes like llama2.c / sentencepiece on ordinary text.
void write_tokenizer_json_from_llama2c(const std::string& bin_path, const std::string& out_dir);

/// The text that `ids` add after `context` (a prompt's ids): decode(context + ids) minus
/// decode(context). A continuation is not the start of a text: its first SentencePiece piece keeps
/// its leading space ("because" + "▁he" -> " he"); only a piece right after BOS (or at the very
/// start, empty context) drops it, as sentencepiece / llama2.c decode a whole sequence.
std::string decode_continuation(const Tokenizer& t, const std::vector<int64_t>& context,
                                const std::vector<int64_t>& ids);

/// Incremental decoding for streaming generation: returns the new text produced by appending
/// `id` (handles byte-fallback pieces / partial UTF-8: text is held back until complete).
/// `context`: the ids the stream continues (the prompt), decoded as in decode_continuation.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& t, const std::vector<int64_t>& context = {});
  std::string push(int64_t id);

 private:
  const Tokenizer& tok_;
  std::vector<int64_t> ids_;
  size_t prefix_ = 0, read_ = 0;
};

}  // namespace peft
