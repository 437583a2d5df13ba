// SentencePiece .model (protobuf ModelProto: pieces, trainer and normalizer specs), read by
// src/tokenizer's own protobuf reader; a loaded model must also encode and decode.
#include "fuzz_util.h"
#include "peft/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = peft::fuzz::put("sp/tokenizer.model", data, size);
  return peft::fuzz::guarded([&] {
    auto tok = peft::load_tokenizer_file(path);
    auto ids = tok->encode("Hello world! The little dog, caf\xc3\xa9 \xe2\x82\xac 123.");
    (void)tok->decode(ids);
  });
}
