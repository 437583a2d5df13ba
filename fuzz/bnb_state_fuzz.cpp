// bitsandbytes quantization state, as transformers serializes 4-bit / 8-bit layers
// (include/peft/quant.h): a safetensors file whose K.quant_state.bitsandbytes__<type> (JSON in
// uint8), K.absmax, K.quant_map, K.nested_* and P.SCB / P.weight_format entries are read back and
// dequantized; an input starting with '{' is a config.json `quantization_config` instead.
#include "fuzz_util.h"
#include "peft/io.h"
#include "peft/quant.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 0 && data[0] == '{') {
    return peft::fuzz::guarded([&] {
      auto path = peft::fuzz::put("config.json", data, size);
      auto j = peft::read_json(path);
      (void)peft::quant::QuantConfig::from_json(j.contains("quantization_config") ? j["quantization_config"] : j, path);
    });
  }
  auto path = peft::fuzz::put("model.safetensors", data, size);
  return peft::fuzz::guarded([&] {
    auto t = peft::load_safetensors(path);
    const std::string qs = ".quant_state.bitsandbytes__";
    for (auto& kv : t) {
      const std::string& k = kv.first;
      auto at = k.find(qs);
      if (at != std::string::npos) {
        auto q = peft::quant::read_4bit(t, k.substr(0, at), path);
        (void)peft::quant::dequantize_4bit(q).sum().item<double>();
      } else if (k.size() > 4 && k.compare(k.size() - 4, 4, ".SCB") == 0) {
        auto q = peft::quant::read_int8(t, k.substr(0, k.size() - 4), path);
        (void)peft::quant::dequantize_int8(q).sum().item<double>();
      }
    }
  });
}
