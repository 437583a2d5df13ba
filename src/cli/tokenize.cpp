// `peft tokenize --model DIR | --tokenizer FILE --text TEXT [--no-special]`
// Prints the ids (one line, space-separated), then the decoded text (specials skipped).
#include <iostream>

#include "cli/command.h"
#include "peft/error.h"
#include "peft/tokenizer.h"

namespace {

int run_tokenize(peft::cli::Args& a) {
  a.reject_unknown({"model", "tokenizer", "text", "no_special"});
  PEFT_CHECK(a.has("model") != a.has("tokenizer"), "tokenize: give exactly one of --model DIR or --tokenizer FILE");
  std::unique_ptr<peft::Tokenizer> tok =
      a.has("model") ? peft::load_tokenizer(a.get("model")) : peft::load_tokenizer_file(a.get("tokenizer"));
  std::string text = a.get("text");
  bool special = !a.get_bool("no_special", false);
  std::vector<int64_t> ids = tok->encode(text, special);
  for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
  std::cout << "\n" << tok->decode(ids, true) << "\n";
  return 0;
}

}  // namespace

PEFT_REGISTER_COMMAND("tokenize", "encode text with a model's tokenizer: --model DIR|--tokenizer FILE --text TEXT [--no-special]",
                      run_tokenize);
