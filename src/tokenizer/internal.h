// Internal pieces shared by the tokenizer implementations.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "peft/error.h"
#include "peft/tokenizer.h"

namespace peft::tok {

using json = nlohmann::json;

/// Whole file as bytes; peft::Error naming the file when it cannot be read.
std::string read_file(const std::string& path);
/// Parses a JSON file; errors name the file.
json read_json(const std::string& path);

/// What tokenizer_config.json / special_tokens_map.json / config.json say about specials.
struct SpecialConfig {
  std::optional<std::string> bos_token, eos_token, pad_token, unk_token;
  std::optional<int64_t> bos_id, eos_id, pad_id;
  std::optional<bool> add_bos, add_eos;
  std::optional<bool> do_lower_case;
  std::string chat_template;
};
/// Reads the config files of `dir` (missing files are fine; malformed ones are errors).
SpecialConfig load_special_config(const std::string& dir);
/// Sets bos/eos/pad/unk ids and chat_template of `t` from `cfg` where it names them.
void apply_special_config(Tokenizer& t, const SpecialConfig& cfg);

std::unique_ptr<Tokenizer> make_llama2c(const std::string& path, const SpecialConfig& cfg);
std::unique_ptr<Tokenizer> make_sentencepiece(const std::string& path, const SpecialConfig& cfg);
/// `j` is the parsed tokenizer.json (or one synthesized for vocab.json/vocab.txt); `where`
/// names the file for messages.
std::unique_ptr<Tokenizer> make_hf(const json& j, const std::string& where, const SpecialConfig& cfg);
json gpt2_files_to_json(const std::string& vocab_json, const std::string& merges_txt);
json bert_vocab_to_json(const std::string& vocab_txt, bool lowercase);

/// Checks an id against the vocabulary; peft::Error otherwise.
void check_id(int64_t id, int64_t vocab, const char* what = "decode");

}  // namespace peft::tok
