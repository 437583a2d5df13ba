#include "models/chunked_loss.h"

#include <torch/torch.h>

#include <algorithm>

#include "models/checkpoint.h"
#include "peft/error.h"
#include "peft/model.h"

namespace peft {

torch::Tensor chunked_causal_lm_loss(const torch::Tensor& h, const torch::Tensor& labels, int64_t chunk,
                                     const HeadFn& head, const std::vector<torch::Tensor>& extra,
                                     const std::vector<torch::Tensor>& params) {
  PEFT_CHECK(chunk > 0, "loss_chunk_tokens must be positive, got ", chunk);
  PEFT_CHECK(h.dim() == 3 && labels.dim() == 2 && labels.size(0) == h.size(0) && labels.size(1) == h.size(1),
             "causal-LM loss: labels have shape ", labels.sizes(), ", hidden states ", h.sizes());
  const int64_t H = h.size(2);
  // Position t predicts token t + 1 (as causal_lm_loss's shift).
  auto hs = h.slice(1, 0, -1).reshape({-1, H});
  auto ls = labels.slice(1, 1).reshape({-1}).to(h.device()).to(torch::kLong);
  const int64_t N = hs.size(0);
  namespace F = torch::nn::functional;
  torch::Tensor total;
  torch::ScalarType dtype = torch::kFloat32;
  for (int64_t s = 0; s < N; s += chunk) {
    const int64_t e = std::min(N, s + chunk);
    auto lc = ls.slice(0, s, e);
    SegmentFn fn = [head, lc](const std::vector<torch::Tensor>& in, bool) {
      auto logits = head(in[0], std::vector<torch::Tensor>(in.begin() + 1, in.end()));
      return F::cross_entropy(logits.to(compute_dtype(logits.scalar_type())), lc,
                              F::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
    };
    std::vector<torch::Tensor> in = {hs.slice(0, s, e)};
    in.insert(in.end(), extra.begin(), extra.end());
    auto part = checkpointed(fn, in, params);
    dtype = part.scalar_type();
    // Chunk sums accumulate in float64, so their order adds no rounding of its own.
    part = part.to(torch::kDouble);
    total = total.defined() ? total + part : part;
  }
  if (!total.defined()) return h.sum() * 0.0 / 0.0;  // no shifted token: NaN, as the empty mean
  // The mean over counted tokens, as cross_entropy's (0 / 0 = NaN when none is counted, as there).
  auto count = (ls != -100).sum().to(torch::kDouble);
  return (total / count).to(dtype);
}

}  // namespace peft
