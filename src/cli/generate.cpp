// `peft generate`: prompt + continuation, greedy (temperature 0) or sampled (temperature,
// top-k, top-p, seed), stopping at EOS or after --max-new-tokens. Uses the KV cache.
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "cli/command.h"
#include "cli/model_args.h"
#include "peft/error.h"
#include "peft/tokenizer.h"

namespace peft::cli {
namespace {

int64_t pick(torch::Tensor logits, double temperature, int64_t top_k, double top_p, torch::Generator& gen) {
  logits = logits.to(torch::kFloat32);
  if (temperature <= 0) return logits.argmax().item<int64_t>();
  logits = logits / temperature;
  if (top_k > 0 && top_k < logits.size(0)) {
    auto kth = std::get<0>(logits.topk(top_k)).min();
    logits = logits.masked_fill(logits < kth, -INFINITY);
  }
  auto probs = torch::softmax(logits, -1);
  if (top_p > 0 && top_p < 1) {  // nucleus sampling (Holtzman et al. 2020)
    auto sorted = probs.sort(-1, /*descending=*/true);
    auto p = std::get<0>(sorted), idx = std::get<1>(sorted);
    auto keep = (p.cumsum(0) - p) < top_p;
    probs = torch::zeros_like(probs).scatter(0, idx, p * keep);
  }
  return torch::multinomial(probs, 1, false, gen).item<int64_t>();
}

int run_generate(Args& a) {
  std::string model_dir = a.get("model");
  std::string prompt = a.get("prompt", "");
  int64_t max_new = a.get_int("max_new_tokens", 64);
  double temperature = a.get_double("temperature", 0.0);
  int64_t top_k = a.get_int("top_k", 0);
  double top_p = a.get_double("top_p", 1.0);
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(a.get_int("seed", 0)));
  PEFT_CHECK(max_new >= 0, "option --max-new-tokens must be >= 0");
  std::string tok_dir = std::filesystem::is_directory(model_dir) ? model_dir
                                                                 : std::filesystem::path(model_dir).parent_path().string();
  LoadedModel lm = load_model_from_args(a);
  auto tok = load_tokenizer(a.get("tokenizer", tok_dir));
  lm.model->eval();
  torch::NoGradGuard ng;
  auto ids = tok->encode(prompt, true);
  PEFT_CHECK(!ids.empty(), "the prompt encodes to no tokens");
  std::cout << prompt << std::flush;
  StreamDecoder dec(*tok, ids);  // continues the prompt: the first piece keeps its space
  KVCache cache;
  auto input = torch::tensor(ids, torch::kLong).unsqueeze(0);
  for (int64_t step = 0; step < max_new; ++step) {
    ModelInput mi;
    mi.input_ids = input;
    mi.cache = &cache;
    auto logits = lm.forward(mi).logits[0][-1];
    int64_t next = pick(logits, temperature, top_k, top_p, gen);
    if (next == tok->eos_id) break;
    std::cout << dec.push(next) << std::flush;
    input = torch::tensor({next}, torch::kLong).unsqueeze(0);
  }
  std::cout << "\n";
  return 0;
}

PEFT_REGISTER_COMMAND("generate", "continue a prompt (greedy, temperature, top-k, top-p, seed)", run_generate);

}  // namespace
}  // namespace peft::cli
