// Pieces shared by the decoder-only families (llama, gpt2): the LM / classification head on the
// final hidden states, and sequence-classification pooling and loss as transformers'
// *ForSequenceClassification compute them.
#pragma once
#include <torch/types.h>

#include "peft/model.h"

namespace peft {

/// Hidden state of the last attended token of each row ([B, T, H] -> [B, H]); with right
/// padding this is the token transformers picks (first pad - 1). No mask: the last position.
torch::Tensor last_token_pool(const torch::Tensor& hidden, const torch::Tensor& attention_mask);

/// transformers' problem_type inference: num_labels == 1 -> MSE regression on float labels,
/// else cross-entropy on integer labels.
torch::Tensor seq_cls_loss(const torch::Tensor& logits, const torch::Tensor& labels);

/// Fills out.logits (and out.loss when in.labels is set) from the final hidden states h: for
/// SeqCls, `score` on the last attended token; otherwise `lm_head`, or h E^T with the tied
/// embedding matrix E when lm_head is unset, and the shifted causal-LM loss. loss_chunk > 0
/// (training, labels given): only the loss, over chunks of that many tokens (models/chunked_loss.h);
/// out.logits stays undefined.
void decoder_head_output(ModelOutput& out, const torch::Tensor& h, const ModelInput& in, TaskType task,
                         const LayerPtr& score, const LayerPtr& lm_head, const torch::Tensor& tied_embedding,
                         int64_t loss_chunk = 0);

}  // namespace peft
