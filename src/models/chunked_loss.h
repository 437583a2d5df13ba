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

}  // namespace peft
