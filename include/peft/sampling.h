// Picking the next token from a row of logits: greedy (temperature 0) or sampled with
// temperature, top-k and top-p (nucleus sampling, Holtzman et al. 2020), from a caller's
// generator. Shared by `peft generate` and `peft serve`, so that both pick the same token from
// the same logits, seed and settings.
//
//   auto gen = at::detail::createCPUGenerator(seed);
//   int64_t next = peft::sample_token(logits[0][-1], {0.8, 40, 0.95}, gen);
#pragma once
#include <torch/torch.h>

#include <cmath>
#include <tuple>

namespace peft {

struct SamplingOptions {
  double temperature = 0;  // <= 0: argmax (no draw from the generator)
  int64_t top_k = 0;       // <= 0 or >= vocab: off
  double top_p = 1;        // outside (0, 1): off
};

/// The next token from `logits` [V]: argmax for temperature <= 0; otherwise softmax(logits / T)
/// restricted to the top_k largest logits (ties at the k-th kept) and then to the smallest set of
/// most probable tokens whose mass reaches top_p, renormalised, and one multinomial draw from `gen`.
inline int64_t sample_token(torch::Tensor logits, const SamplingOptions& o, torch::Generator& gen) {
  logits = logits.to(torch::kFloat32);
  if (o.temperature <= 0) return logits.argmax().item<int64_t>();
  logits = logits / o.temperature;
  if (o.top_k > 0 && o.top_k < logits.size(0)) {
    auto kth = std::get<0>(logits.topk(o.top_k)).min();
    logits = logits.masked_fill(logits < kth, -INFINITY);
  }
  auto probs = torch::softmax(logits, -1);
  if (o.top_p > 0 && o.top_p < 1) {  // keep tokens whose preceding mass is below top_p
    auto sorted = probs.sort(-1, /*descending=*/true);
    auto p = std::get<0>(sorted), idx = std::get<1>(sorted);
    auto keep = (p.cumsum(0) - p) < o.top_p;
    probs = torch::zeros_like(probs).scatter(0, idx, p * keep);
  }
  return torch::multinomial(probs, 1, false, gen).item<int64_t>();
}

}  // namespace peft
