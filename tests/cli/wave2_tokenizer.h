// A word-level tokenizer for the wave-2 llama fixture (vocab 256): SentencePiece-style pieces
// "▁w<id>" for ids >= 3, <unk> <s> </s> = 0 1 2, Metaspace pre-tokenizer and decoder, BOS added.
// Text "w5 w6" encodes to [1, 5, 6]; generated ids decode to " w<id>".
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "peft/io.h"

namespace peft::test {

inline const std::string kSpmSpace = "\xE2\x96\x81";  // "▁"

/// Writes DIR/tokenizer.json.
inline void write_wave2_wordlevel_tokenizer(const std::string& dir) {
  nlohmann::json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int i = 3; i < 256; ++i) vocab[kSpmSpace + "w" + std::to_string(i)] = i;
  nlohmann::json added = nlohmann::json::array();
  for (auto& [t, id] : std::vector<std::pair<std::string, int>>{{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}})
    added.push_back({{"id", id}, {"content", t}, {"special", true}});
  nlohmann::json meta = {{"type", "Metaspace"}, {"replacement", kSpmSpace}, {"prepend_scheme", "always"}, {"split", true}};
  nlohmann::json tj = {
      {"version", "1.0"},
      {"added_tokens", added},
      {"pre_tokenizer", meta},
      {"decoder", meta},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "<unk>"}}}};
  write_json(dir + "/tokenizer.json", tj);
}

}  // namespace peft::test
