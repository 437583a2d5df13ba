// The causal-LM loss without [B, T, V] logits: the LM head, log-softmax and NLL run over chunks
// of tokens, each a checkpointed segment (models/checkpoint.h), so neither the forward nor the
// backward holds more than one chunk's logits [chunk, V] (plus their gradient) at a time.
#pragma once
#include <torch/types.h>

#include <functional>
#include <vector>

namespace peft {

/// head(h [n, H], extra) -> logits [n, V]; `extra` are the tensors it reads (a tied embedding
/// matrix), passed so gradients reach them; `params` its trainable parameters.
using HeadFn = std::function<torch::Tensor(const torch::Tensor& h, const std::vector<torch::Tensor>& extra)>;

/// Equals causal_lm_loss(head(h), labels) (mean over labels[:, 1:] != -100 of the NLL of
/// logits[:, :-1]) with its gradients, computed `chunk` tokens at a time (chunk > 0).
torch::Tensor chunked_causal_lm_loss(const torch::Tensor& h, const torch::Tensor& labels, int64_t chunk,
                                     const HeadFn& head, const std::vector<torch::Tensor>& extra,
                                     const std::vector<torch::Tensor>& params);

/// The same loss for a frozen Linear head h W^T (W [V, H], no bias, not trainable; a tied
/// embedding matrix or an untied lm_head) without recomputation: each chunk's logits give their
/// loss and, at once, the gradient of the mean loss with respect to that chunk's hidden states
/// (as Liger's fused linear cross-entropy), which is all that is saved ([N, H], not [N, V]). The
/// products run in W's compute dtype (peft/precision.h), the log-softmax in float32 (float64 for
/// a float64 model); each chunk's gradient is computed by the same kernels autograd runs on the
/// unchunked path (nll_loss's -1/count at the labels, _log_softmax_backward_data, the product
/// with W), so the two agree to the float32 sums' rounding.
torch::Tensor frozen_head_chunked_loss(const torch::Tensor& h, const torch::Tensor& labels, int64_t chunk,
                                       const torch::Tensor& W);

}  // namespace peft
