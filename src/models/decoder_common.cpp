#include "models/decoder_common.h"
#include "models/chunked_loss.h"
#include "peft/model.h"

#include <torch/torch.h>

#include "peft/error.h"
#include "peft/precision.h"

namespace peft {

torch::Tensor last_token_pool(const torch::Tensor& hidden, const torch::Tensor& attention_mask) {
  const int64_t B = hidden.size(0), T = hidden.size(1);
  torch::Tensor idx;
  if (attention_mask.defined()) {
    auto m = attention_mask.slice(1, attention_mask.size(1) - T).to(torch::kLong);
    // Index of the last 1 in each row: T-1 - argmax over the reversed mask.
    idx = (T - 1) - m.flip({1}).argmax(1);
  } else {
    idx = torch::full({B}, T - 1, torch::TensorOptions().dtype(torch::kLong).device(hidden.device()));
  }
  return hidden.index({torch::arange(B, idx.options()), idx});
}

torch::Tensor seq_cls_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  namespace F = torch::nn::functional;
  if (logits.size(-1) == 1) return F::mse_loss(logits.squeeze(-1).to(compute_dtype(logits.scalar_type())), labels.to(compute_dtype(logits.scalar_type())));
  PEFT_CHECK(labels.scalar_type() == torch::kLong || labels.scalar_type() == torch::kInt, "classification labels must be integers");
  int64_t n = logits.size(-1);
  PEFT_CHECK(labels.numel() == 0 || (labels.min().item<int64_t>() >= 0 && labels.max().item<int64_t>() < n),
             "classification label outside [0, ", n, ")");
  return F::cross_entropy(logits.to(compute_dtype(logits.scalar_type())), labels.to(torch::kLong));
}

void decoder_head_output(ModelOutput& out, const torch::Tensor& h, const ModelInput& in, TaskType task,
                         const LayerPtr& score, const LayerPtr& lm_head, const torch::Tensor& tied_embedding,
                         int64_t loss_chunk) {
  if (task == TaskType::SeqCls) {
    out.logits = score->forward(last_token_pool(h, in.attention_mask));
    if (in.labels.defined()) out.loss = seq_cls_loss(out.logits, in.labels);
    return;
  }
  if (loss_chunk > 0 && in.labels.defined()) {
    // A frozen plain head (no tuner wraps it, no bias): the fused form, nothing recomputed.
    auto lin = std::dynamic_pointer_cast<Linear>(lm_head);
    const torch::Tensor W = lm_head ? (lin && !lin->conv1d && !lin->bias.defined() ? lin->weight : torch::Tensor())
                                    : tied_embedding;
    if (W.defined() && !W.requires_grad()) {
      out.loss = frozen_head_chunked_loss(h, in.labels, loss_chunk, W);
      return;
    }
    std::vector<torch::Tensor> params;
    if (lm_head)
      for (auto& p : lm_head->parameters())
        if (p.requires_grad()) params.push_back(p);
    LayerPtr head = lm_head;
    out.loss = chunked_causal_lm_loss(
        h, in.labels, loss_chunk,
        [head](const torch::Tensor& x, const std::vector<torch::Tensor>& e) {
          return head ? head->forward(x) : tied_head_logits(x, e[0]);
        },
        lm_head ? std::vector<torch::Tensor>() : std::vector<torch::Tensor>{tied_embedding}, params);
    return;
  }
  out.logits = lm_head ? lm_head->forward(h) : tied_head_logits(h, tied_embedding);
  if (in.labels.defined()) out.loss = causal_lm_loss(out.logits, in.labels);
}

}  // namespace peft
