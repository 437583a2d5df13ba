// config.json of one model family (PEFT_FUZZ_FAMILY: llama, gpt2, bert, t5, ... = a folder of
// tests/fixtures/hf/models), loaded with that fixture's weights and run on a short input.
#include <torch/torch.h>

#include "fuzz_util.h"
#include "peft/model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    std::string d = std::string("cfg_") + PEFT_FUZZ_FAMILY;
    peft::fuzz::copy_fixture(std::string("tests/fixtures/hf/models/") + PEFT_FUZZ_FAMILY + "/model.safetensors",
                             d + "/model.safetensors");
    return peft::fuzz::work_dir() + "/" + d;
  }();
  peft::fuzz::put(std::string("cfg_") + PEFT_FUZZ_FAMILY + "/config.json", data, size);
  return peft::fuzz::guarded([&] {
    auto m = peft::load_model(dir);
    peft::ModelInput in;
    in.input_ids = torch::tensor({{1, 2, 3}}, torch::kLong);
    if (m->is_encoder_decoder()) in.decoder_input_ids = torch::tensor({{0, 1}}, torch::kLong);
    torch::NoGradGuard ng;
    (void)m->forward(in);
  });
}
