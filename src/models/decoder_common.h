// Pieces shared by the decoder-only families (llama, gpt2): sequence-classification pooling
// and loss as transformers' *ForSequenceClassification compute them.
#pragma once
#include <torch/types.h>

namespace peft {

/// Hidden state of the last attended token of each row ([B, T, H] -> [B, H]); with right
/// padding this is the token transformers picks (first pad - 1). No mask: the last position.
torch::Tensor last_token_pool(const torch::Tensor& hidden, const torch::Tensor& attention_mask);

/// transformers' problem_type inference: num_labels == 1 -> MSE regression on float labels,
/// else cross-entropy on integer labels.
torch::Tensor seq_cls_loss(const torch::Tensor& logits, const torch::Tensor& labels);

}  // namespace peft
