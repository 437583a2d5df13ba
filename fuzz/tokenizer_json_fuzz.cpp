// tokenizer.json: every normalizer / pre-tokenizer / model (BPE, WordPiece, Unigram) / decoder
// / post-processor kind the loader knows; a loaded tokenizer must also encode and decode.
#include "fuzz_util.h"
#include "peft/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = peft::fuzz::put("tok/tokenizer.json", data, size);
  return peft::fuzz::guarded([&] {
    auto tok = peft::load_tokenizer_file(path);
    auto ids = tok->encode("Hello world! The little dog, caf\xc3\xa9 \xe2\x82\xac 123.");
    (void)tok->decode(ids);
    if (tok->vocab_size() > 0) (void)tok->id_to_token(tok->vocab_size() - 1);
  });
}
