// Activation (gradient) checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear
// Memory Cost"): a segment's forward runs without recording a graph, keeping only its inputs;
// the backward re-runs it with grad enabled and differentiates the recomputed graph. As
// torch.utils.checkpoint(preserve_rng_state=True), the random generator is rewound so dropout
// draws the same masks in the recompute.
//
// Families call run_block() once per transformer block; the block's function receives its
// tensors through `inputs` (in the recompute: detached copies that require grad as the
// originals did), so gradients reach whatever produced them (a prefix encoder, the encoder
// output a decoder attends, a trainable position bias). The trainable parameters registered
// under the block (the base's in full fine-tuning, a tuner's injected layers) are inputs of the
// autograd node too; frozen weights get no gradient. A trainable tensor the function reaches
// any other way is an error in the backward (its gradient would be lost).
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <functional>
#include <vector>

namespace peft {

/// The training-memory switches of a model (docs/MEMORY.md); both act only in training mode
/// with grad enabled.
struct MemoryOptions {
  /// Recompute each transformer block in the backward instead of keeping its activations
  /// (transformers' gradient_checkpointing_enable(); TrainingArguments' gradient_checkpointing).
  bool gradient_checkpointing = false;
  /// Causal LM: the loss over chunks of this many tokens, never holding [B, T, V] logits
  /// (out.logits stays undefined); 0 = off.
  int64_t loss_chunk_tokens = 0;
};
/// Sets the switches of `model` (a PretrainedModel, owned by a shared_ptr). They are kept beside
/// the model, not in it, and forgotten with it.
void set_memory_options(const torch::nn::Module& model, const MemoryOptions& options);
/// The switches of `model` (all off unless set).
MemoryOptions memory_options(const torch::nn::Module& model);

/// A segment: inputs -> output. `recompute` is true when re-run in the backward: the function
/// must then have no side effects (no KV-cache writes; the caller's cache may be gone).
using SegmentFn = std::function<torch::Tensor(const std::vector<torch::Tensor>& inputs, bool recompute)>;

/// Runs fn(inputs, false) and, when the output needs a gradient, drops its graph: the backward
/// recomputes fn with the same random state and returns the gradients of `inputs` (undefined
/// ones allowed) and of `params`. fn must capture by value (it outlives the caller's frame).
torch::Tensor checkpointed(const SegmentFn& fn, const std::vector<torch::Tensor>& inputs,
                           const std::vector<torch::Tensor>& params);

/// True when `on`, `m` is in training mode and grad mode is enabled (transformers checkpoints
/// only `if self.gradient_checkpointing and self.training`).
bool checkpoint_active(bool on, const torch::nn::Module& m);

/// One transformer block: checkpointed(fn, inputs, trainable parameters of `block`) when
/// checkpoint_active(on, block), else fn(inputs, false).
torch::Tensor run_block(bool on, const torch::nn::Module& block, const SegmentFn& fn,
                        const std::vector<torch::Tensor>& inputs);

/// A block whose attention keeps KV-cache slots (`caches`; a null slot: no cache there). The
/// slots' tensors ride along as the last inputs (so a checkpointed block differentiates through
/// them); fn gets writable copies through `kv` (null where the slot is) and they are written back
/// to the caller's slots only in the first forward, never in a recompute.
using CachedBlockFn =
    std::function<torch::Tensor(const std::vector<torch::Tensor>& inputs, const std::vector<torch::Tensor*>& kv)>;
torch::Tensor run_cached_block(bool on, const torch::nn::Module& block, const CachedBlockFn& fn,
                               std::vector<torch::Tensor> inputs, const std::vector<torch::Tensor*>& caches);

/// Refuses checkpointing a model whose forward has a gated prefix (UniPELT's prefix gate: its
/// gate scores are written outside the block's inputs).
void refuse_checkpointed_prefix_gate(bool on, const torch::nn::Module& m, bool gated);

}  // namespace peft
