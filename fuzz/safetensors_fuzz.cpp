// safetensors: 8-byte header length, JSON header (dtype / shape / data_offsets per tensor,
// __metadata__), tensor bytes. Every tensor is also read back so out-of-range offsets show.
#include "fuzz_util.h"
#include "peft/io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto path = peft::fuzz::put("x.safetensors", data, size);
  return peft::fuzz::guarded([&] {
    peft::Metadata meta;
    auto t = peft::load_safetensors(path, &meta);
    for (auto& kv : t) (void)kv.second.sum().item<double>();
  });
}
