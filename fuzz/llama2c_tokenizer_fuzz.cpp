// llama2.c tokenizer.bin (max_token_length, then score / length / bytes per piece), and its
// conversion to a tokenizer.json.
#include "fuzz_util.h"
#include "peft/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = peft::fuzz::put("l2c/tokenizer.bin", data, size);
  return peft::fuzz::guarded([&] {
    auto tok = peft::load_tokenizer_file(path);
    (void)tok->decode(tok->encode("Once upon a time, caf\xc3\xa9."));
    peft::write_tokenizer_json_from_llama2c(path, peft::fuzz::work_dir() + "/l2c_out");
  });
}
