#include "models/chunked_loss.h"

#include <torch/torch.h>

#include <algorithm>

#include "models/checkpoint.h"
#include "peft/error.h"
#include "peft/model.h"
#include "peft/precision.h"

namespace peft {

namespace {

/// The checked, shifted pairs of both chunked losses: position t predicts token t + 1 (as
/// causal_lm_loss's shift); hidden states [N, H], labels [N].
std::pair<torch::Tensor, torch::Tensor> shifted_pairs(const torch::Tensor& h, const torch::Tensor& labels, int64_t chunk) {
  PEFT_CHECK(chunk > 0, "loss_chunk_tokens must be positive, got ", chunk);
  PEFT_CHECK(h.dim() == 3 && labels.dim() == 2 && labels.size(0) == h.size(0) && labels.size(1) == h.size(1),
             "causal-LM loss: labels have shape ", labels.sizes(), ", hidden states ", h.sizes());
  return {h.slice(1, 0, -1).reshape({-1, h.size(2)}), labels.slice(1, 1).reshape({-1}).to(h.device()).to(torch::kLong)};
}

}  // namespace

torch::Tensor chunked_causal_lm_loss(const torch::Tensor& h, const torch::Tensor& labels, int64_t chunk,
                                     const HeadFn& head, const std::vector<torch::Tensor>& extra,
                                     const std::vector<torch::Tensor>& params) {
  auto [hs, ls] = shifted_pairs(h, labels, chunk);
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

namespace {

namespace F = torch::nn::functional;

/// Sums the chunks' losses (float64) and, when `dh` is defined, fills it with d(mean)/dh.
double frozen_head_pass(const torch::Tensor& hs, const torch::Tensor& ls, int64_t chunk, const torch::Tensor& W,
                        int64_t count, torch::Tensor dh) {
  const auto cd = linear_compute_dtype(W.scalar_type());
  const auto ld = compute_dtype(hs.scalar_type());
  const auto Wc = W.to(cd);
  double total = 0;
  for (int64_t s = 0; s < hs.size(0); s += chunk) {
    const int64_t e = std::min(hs.size(0), s + chunk);
    auto lc = ls.slice(0, s, e);
    auto z = F::linear(hs.slice(0, s, e).to(cd), Wc);  // [n, V] in the compute dtype
    auto lsm = torch::log_softmax(z.to(ld), -1);
    total += F::nll_loss(lsm, lc, F::NLLLossFuncOptions().ignore_index(-100).reduction(torch::kSum))
                 .to(torch::kDouble)
                 .item<double>();
    if (!dh.defined()) continue;  // callers return early when count == 0
    // d(mean NLL)/d(log-softmax): -1/count at each counted label (nll_loss's backward).
    auto g = torch::zeros_like(lsm);
    auto rows = (lc != -100).nonzero().squeeze(1);
    g.index_put_({rows, lc.index_select(0, rows)}, torch::scalar_tensor(-1.0 / static_cast<double>(count), g.options()));
    auto dz = torch::_log_softmax_backward_data(g, lsm, -1, lsm.scalar_type());
    dh.slice(0, s, e).copy_(dz.to(z.scalar_type()).mm(Wc).to(hs.scalar_type()));
  }
  return total;
}

struct FrozenHeadLoss : torch::autograd::Function<FrozenHeadLoss> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hs, const torch::Tensor& ls,
                               int64_t chunk, const torch::Tensor& W, int64_t count) {
    auto dh = torch::empty_like(hs);
    const double total = frozen_head_pass(hs, ls, chunk, W, count, dh);
    ctx->save_for_backward({dh});
    return torch::scalar_tensor(total / static_cast<double>(count), torch::kDouble).to(compute_dtype(hs.scalar_type()));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    auto dh = ctx->get_saved_variables()[0];
    return {dh * grad[0].to(dh.scalar_type()), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor frozen_head_chunked_loss(const torch::Tensor& h, const torch::Tensor& labels, int64_t chunk,
                                       const torch::Tensor& W) {
  PEFT_CHECK(!W.requires_grad(), "frozen_head_chunked_loss: the head's weight trains (use chunked_causal_lm_loss)");
  auto [hs, ls] = shifted_pairs(h, labels, chunk);
  const int64_t count = (ls != -100).sum().item<int64_t>();
  const auto ld = compute_dtype(h.scalar_type());
  // No counted token: NaN, as the empty mean (and no gradient to speak of).
  if (count == 0) return h.sum().to(ld) * 0.0 / 0.0;
  if (!(torch::GradMode::is_enabled() && hs.requires_grad())) {
    torch::NoGradGuard ng;
    return torch::scalar_tensor(frozen_head_pass(hs, ls, chunk, W, count, {}) / static_cast<double>(count), torch::kDouble)
        .to(ld);
  }
  return FrozenHeadLoss::apply(hs, ls, chunk, W, count);
}

}  // namespace peft
