// llama2.c checkpoints ("version 0": 7 int32 header, float32 weights), imported as a Hugging
// Face Llama config + weights.
#include "fuzz_util.h"
#include "io/llama2c.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = peft::fuzz::put("model.bin", data, size);
  return peft::fuzz::guarded([&] {
    nlohmann::json config;
    peft::TensorMap w;
    peft::import_llama2c(path, &config, &w);
  });
}
