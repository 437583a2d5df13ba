// adapter_config.json of every method: the first input byte picks one of the fixture adapters
// saved by Python peft (tests/fixtures/peft/adapters/llama/<method>), whose weights sit next
// to the fuzzed config; the adapter is loaded onto the fixture Llama and run on a short input.
#include <torch/torch.h>

#include "fuzz_util.h"
#include "io/adapter_config.h"
#include "peft/model.h"
#include "peft/tuner.h"

static const char* kMethods[] = {"lora", "rslora", "dora", "ia3", "loha", "lokr", "lokr_decomposed",
                                 "adalora", "prompt_tuning", "p_tuning", "prefix_tuning"};
constexpr size_t kNum = sizeof(kMethods) / sizeof(kMethods[0]);

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const std::string model = std::string(PEFT_FUZZ_SOURCE_DIR) + "/tests/fixtures/hf/models/llama";
  static bool copied = [] {
    for (auto* m : kMethods)
      peft::fuzz::copy_fixture(std::string("tests/fixtures/peft/adapters/llama/") + m + "/adapter_model.safetensors",
                               std::string("ad_") + m + "/adapter_model.safetensors");
    return true;
  }();
  (void)copied;
  const char* method = kMethods[data[0] % kNum];
  auto cfg = peft::fuzz::put(std::string("ad_") + method + "/adapter_config.json", data + 1, size - 1);
  return peft::fuzz::guarded([&] {
    (void)peft::read_adapter_config_file(cfg);
    auto pm = std::make_shared<peft::PeftModel>(peft::load_model(model));
    pm->load_adapter(peft::fuzz::work_dir() + "/ad_" + method, "default");
    peft::ModelInput in;
    in.input_ids = torch::tensor({{1, 2, 3}}, torch::kLong);
    torch::NoGradGuard ng;
    (void)pm->forward(in);
  });
}
