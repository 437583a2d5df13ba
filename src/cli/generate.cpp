// `peft generate`: prompt + continuation, greedy (temperature 0) or sampled (temperature,
// top-k, top-p, seed), stopping at EOS or after --max-new-tokens. Uses the KV cache.
// With --row_adapters a,__base__,b: a mixed-adapter batch, one row per name (the same --prompt
// for every row, or one --prompt per row), each row printed as "[name] text".
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "cli/command.h"
#include "cli/model_args.h"
#include "peft/error.h"
#include "peft/generate.h"
#include "peft/tokenizer.h"

namespace peft::cli {
namespace {

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
  SamplingOptions so;
  so.max_new_tokens = max_new;
  so.temperature = temperature;
  so.top_k = top_k;
  so.top_p = top_p;
  so.eos_token_id = tok->eos_id;
  if (!lm.row_adapters.empty()) {  // a mixed-adapter batch: one row per adapter name
    auto prompts = a.get_all("prompt");
    if (prompts.empty()) prompts.push_back(prompt);
    const size_t rows = lm.row_adapters.size();
    PEFT_CHECK(prompts.size() == 1 || prompts.size() == rows, "option --prompt: give one prompt (used for every row) or ",
               rows, " (one per --row_adapters entry), got ", prompts.size());
    std::vector<std::vector<int64_t>> ids;
    for (size_t i = 0; i < rows; ++i) {
      ids.push_back(tok->encode(prompts.size() == 1 ? prompts[0] : prompts[i], true));
      PEFT_CHECK(!ids.back().empty(), "prompt ", i, " encodes to no tokens");
    }
    auto res = generate_causal(lm.forward, ids, so, gen);
    for (size_t i = 0; i < rows; ++i) {
      StreamDecoder dec(*tok, ids[i]);
      std::string text = prompts.size() == 1 ? prompts[0] : prompts[i];
      for (auto t : res.tokens[i]) text += dec.push(t);
      std::cout << "[" << lm.row_adapters[i] << "] " << text << "\n";
    }
    return 0;
  }
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
    int64_t next = sample_token(logits, so, gen);
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
