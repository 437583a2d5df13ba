// The older Hugging Face tokenizer files, converted to the tokenizer.json layout that hf.cpp
// reads (as transformers' slow -> fast converters do): GPT-2 / RoBERTa vocab.json + merges.txt
// (byte-level BPE) and BERT vocab.txt (WordPiece).
#include <string>

#include "tokenizer/internal.h"
#include "tokenizer/unicode.h"

namespace peft::tok {

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
