// Decoder-only generation of a batch of prompts (see include/peft/generate.h).
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/generate.h"

namespace peft {

int64_t sample_token(torch::Tensor logits, const SamplingOptions& o, torch::Generator& gen) {
  logits = logits.to(torch::kFloat32);
  if (o.temperature <= 0) return logits.argmax().item<int64_t>();
  logits = logits / o.temperature;
  if (o.top_k > 0 && o.top_k < logits.size(0)) {
    auto kth = std::get<0>(logits.topk(o.top_k)).min();
    logits = logits.masked_fill(logits < kth, -INFINITY);
  }
  auto probs = torch::softmax(logits, -1);
  if (o.top_p > 0 && o.top_p < 1) {  // the smallest set of top tokens whose mass reaches top_p
    auto sorted = probs.sort(-1, /*descending=*/true);
    auto p = std::get<0>(sorted), idx = std::get<1>(sorted);
    auto keep = (p.cumsum(0) - p) < o.top_p;
    probs = torch::zeros_like(probs).scatter(0, idx, p * keep);
  }
  return torch::multinomial(probs, 1, false, gen).item<int64_t>();
}

CausalGeneration generate_causal(const ForwardFn& forward, const std::vector<std::vector<int64_t>>& prompts,
                                 const SamplingOptions& o, torch::Generator& gen) {
  PEFT_CHECK(!prompts.empty(), "generate: no prompts");
  PEFT_CHECK(o.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", o.max_new_tokens);
  const int64_t B = static_cast<int64_t>(prompts.size());
  int64_t L = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    PEFT_CHECK(!prompts[i].empty(), "generate: prompt ", i, " has no tokens");
    L = std::max<int64_t>(L, prompts[i].size());
  }
  // Left padding: row i's tokens end at column L - 1.
  auto ids = torch::zeros({B, L}, torch::kLong), mask = torch::zeros({B, L}, torch::kLong);
  for (int64_t i = 0; i < B; ++i) {
    const int64_t n = prompts[i].size();
    ids[i].slice(0, L - n) = torch::tensor(prompts[i], torch::kLong);
    mask[i].slice(0, L - n).fill_(1);
  }
  // transformers' decoder-only position_ids: cumsum(mask) - 1, padding at 1 (masked anyway).
  auto pos = (mask.cumsum(1) - 1).masked_fill(mask == 0, 1);
  CausalGeneration res;
  res.tokens.resize(B);
  std::vector<bool> done(B, false);
  std::vector<torch::Tensor> step_scores;
  KVCache cache;
  ModelInput in;
  in.input_ids = ids;
  in.attention_mask = mask;
  in.position_ids = pos;
  in.cache = &cache;
  auto next_pos = pos.select(1, L - 1) + 1;  // [B]
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    auto logits = forward(in).logits.select(1, -1).to(torch::kFloat32);  // [B, V]
    step_scores.push_back(logits);
    auto next = torch::zeros({B, 1}, torch::kLong);
    bool all_done = true;
    for (int64_t i = 0; i < B; ++i) {
      if (done[i]) continue;  // finished rows keep decoding a pad token nobody reads
      int64_t t = sample_token(logits[i], o, gen);
      if (t == o.eos_token_id) {
        done[i] = true;
        continue;
      }
      res.tokens[i].push_back(t);
      next[i][0] = t;
      all_done = false;
    }
    if (all_done) break;
    in.input_ids = next;
    in.attention_mask = torch::cat({in.attention_mask, torch::ones({B, 1}, torch::kLong)}, 1);
    in.position_ids = next_pos.unsqueeze(1);
    next_pos = next_pos + 1;
  }
  if (!step_scores.empty()) res.scores = torch::stack(step_scores);
  return res;
}

}  // namespace peft
