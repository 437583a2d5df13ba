// One training step (forward + backward + AdamW step) of a randomly initialised Llama-architecture
// causal LM, either fully fine-tuned or with one PEFT method: the unit `peft bench` and
// bench/train_step_bench.cpp measure. No data, no checkpoints, no logging: only the step.
//
//   peft::cli::BenchShape s = peft::cli::BenchShape::small();
//   peft::cli::StepBench b(s, "lora");   // or "full"
//   b.step();                            // returns the loss
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "peft/model.h"
#include "peft/precision.h"
#include "peft/quant.h"
#include "peft/tuner.h"

namespace peft::cli {

struct BenchShape {
  // ~134M parameters (85M in the blocks, 2 x 24.6M embeddings): Llama architecture, untied head.
  int64_t hidden = 768, layers = 12, heads = 12, intermediate = 2048, vocab = 32000;
  int64_t batch = 4, seq = 128;
  int64_t kv_heads = 0;  // grouped-query attention's key/value heads (0: as many as heads)
  double rope_theta = 10000.0;
  /// A ~0.2M-parameter model and a tiny batch: seconds, for CI.
  static BenchShape small();
  /// ~58M parameters (hidden 512, 8 layers, vocab 32000), batch 4 x 128: `--medium`.
  static BenchShape medium();
  /// Llama 3 8B's architecture (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate
  /// 14336, vocab 128256, rope theta 500000), batch 1 x 256: `--shape llama3-8b`.
  static BenchShape llama3_8b();
  /// config.json of the model (LlamaForCausalLM).
  nlohmann::json config() const;
  /// Parameters of that model: embeddings, untied head, the blocks' Linears and norms.
  int64_t parameters() const;
  int64_t tokens_per_step() const { return batch * seq; }
};

/// The adapter config the benchmark uses for `method` (LoRA family: r 8 on q, v; others: the
/// method's defaults; AdaLoRA: total_step set). "full" is not a method (returns null).
nlohmann::json bench_method_config(const std::string& method, int64_t total_steps);

class StepBench {
 public:
  /// Builds the model (seeded), the adapter ("full": every parameter trains), the optimizer
  /// (AdamW, lr 1e-4, weight decay 0.01) and one random batch (labels = input ids).
  /// dtype bfloat16: the frozen base in bfloat16, trainable tensors (all of them for "full":
  /// mixed precision) in float32, Linear products in bfloat16 (docs/PRECISION.md).
  /// quant (4-bit / int8, docs/QUANTIZATION.md): the frozen base's Linear layers quantized after
  /// the model is built, products in quant->compute_dtype (full fine-tuning is refused).
  /// With quant the float Linear weights are never all resident: the model is built without
  /// writing them (models/skip_init.h) and each is filled with its random init right before it
  /// is quantized, layer by layer. adapter_overrides (an object) replaces keys of the method's
  /// bench config (e.g. {"r": 16, "target_modules": [...]}).
  StepBench(const BenchShape& shape, const std::string& method, int64_t total_steps = 1000,
            torch::Dtype dtype = torch::kFloat32, const quant::QuantConfig* quant = nullptr,
            const nlohmann::json& adapter_overrides = nullptr);
  int64_t quantized_layers = 0;
  double quant_bits_per_param = 0, quant_bits_per_param_blocks = 0;  // of the quantized Linear weights
  /// One optimizer step; returns the loss.
  double step();
  /// Called before backward (arming the data-parallel buckets' overlap) and between backward and
  /// the optimizer step (the gradient sum).
  std::function<void()> before_backward, before_update;
  const std::vector<torch::Tensor>& trainable_params() const { return params_; }
  /// The base model (its gradient_checkpointing / loss_chunk_tokens switches).
  PretrainedModel& model() { return *model_; }
  int64_t trainable = 0, total = 0;
  int64_t targeted_modules = 0;  // modules the adapter wraps (0 for full fine-tuning)
  nlohmann::json adapter_config;  // null for full fine-tuning

 private:
  ModelPtr model_;
  PeftModelPtr pm_;
  std::vector<torch::Tensor> params_;
  std::unique_ptr<torch::optim::AdamW> opt_;
  ModelInput in_;
  int64_t step_ = 0;
  std::unique_ptr<MatmulDtypeGuard> matmul_dtype_;
};

/// Current and peak resident set size of this process in KiB (/proc/self/status VmRSS, VmHWM).
struct Rss {
  int64_t rss_kib = 0, hwm_kib = 0;
};
Rss read_rss();
/// Resets VmHWM to the current RSS (writes 5 to /proc/self/clear_refs); false where the kernel
/// refuses.
bool reset_peak_rss();

}  // namespace peft::cli
