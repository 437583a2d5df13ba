// Reduced-precision frozen bases (docs/PRECISION.md).
//
// A model loaded with --dtype bfloat16|float16 keeps its frozen weights in that dtype (the
// *storage* dtype). Everything else follows three rules, as peft's autocast_adapter_dtype and
// torch.autocast do it:
//   - activations between layers are float32 (to_activation: embedding lookups are cast up),
//     so norms, softmax, attention, the residual stream and the loss run in float32 — except
//     under HalfActivations, where a family that supports it (Llama) keeps them in the half
//     dtype as transformers does (RMSNorm, softmax and the loss still accumulate in float32);
//   - a Linear's matrix product runs in its *compute dtype* (the weight's dtype, or the
//     MatmulDtypeGuard override for trainable float32 weights: mixed-precision full
//     fine-tuning) on an input cast to it, and returns the input's dtype (frozen_linear);
//   - trainable tensors (adapters, modules_to_save copies, trainable biases), hence their
//     gradients and AdamW state, are float32 (trainable_dtype).
// With a float32 (or float64) model nothing here changes a single operation.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace peft {

/// bfloat16 or float16.
inline bool is_half_dtype(torch::ScalarType t) { return t == torch::kBFloat16 || t == torch::kFloat16; }

/// The dtype of trainable tensors on a base stored in `t`: float32 for half types (peft's
/// autocast_adapter_dtype), `t` otherwise (float64 stays float64 for gradient checks).
inline torch::ScalarType trainable_dtype(torch::ScalarType t) { return is_half_dtype(t) ? torch::kFloat32 : t; }

/// Whether this thread's forward may keep activations in the base's half dtype (HalfActivations).
bool half_activations_allowed();

/// While alive (on this thread), a model family that computes in bfloat16 end to end as
/// transformers does (`family_keeps_half` in to_activation) keeps its activations in the
/// base's half dtype: norms, softmax and the loss still accumulate in float32. PeftModel::forward
/// holds one when every live adapter's layers take half activations (TunerLayer::
/// keeps_half_activations); guards nest.
class HalfActivations {
 public:
  explicit HalfActivations(bool on);
  ~HalfActivations();
  HalfActivations(const HalfActivations&) = delete;
  HalfActivations& operator=(const HalfActivations&) = delete;

 private:
  bool prev_;
};

/// Activations leave an embedding lookup in float32 when the table is half precision, unless
/// the family computes in the half dtype (`family_keeps_half`) and a HalfActivations guard allows it.
inline torch::Tensor to_activation(const torch::Tensor& x, bool family_keeps_half = false) {
  if (!x.defined() || !is_half_dtype(x.scalar_type())) return x;
  return family_keeps_half && half_activations_allowed() ? x : x.to(torch::kFloat32);
}

/// y = x W^T (+ b), or y = x W (+ b) when conv1d (W stored [in, out] as GPT-2's Conv1D), with
/// the product computed in `compute` (x and W cast to it; W is not copied when already in it)
/// and y, plus the bias, in x's dtype. The frozen Linear uses it, and a quantized Linear can pass
/// its weight dequantized to `compute`. Throws for float16 on CPU (check_compute_dtype).
torch::Tensor frozen_linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& bias, bool conv1d,
                            torch::ScalarType compute);

/// Logits of a head tied to the embedding matrix E [V, H]: h E^T, as frozen_linear when E is
/// stored in another dtype than h (a bfloat16 table), else the plain product.
torch::Tensor tied_head_logits(const torch::Tensor& h, const torch::Tensor& E);

/// The compute dtype of a Linear whose weight is stored in `weight`: the MatmulDtypeGuard
/// override for float32 weights when one is active, else `weight` itself.
torch::ScalarType linear_compute_dtype(torch::ScalarType weight);

/// While alive, Linear layers with float32 weights compute their products in `dtype`
/// (mixed-precision training of full-precision weights, as torch.autocast). nullopt: no override.
/// Process-wide (training runs one model); guards nest.
class MatmulDtypeGuard {
 public:
  explicit MatmulDtypeGuard(std::optional<torch::ScalarType> dtype);
  ~MatmulDtypeGuard();
  MatmulDtypeGuard(const MatmulDtypeGuard&) = delete;
  MatmulDtypeGuard& operator=(const MatmulDtypeGuard&) = delete;

 private:
  std::optional<torch::ScalarType> prev_;
};

/// A clear error for a product LibTorch 1.13 does not implement: float16 matmul on CPU.
/// `what` names the caller (e.g. "peft train --dtype float16").
void check_compute_dtype(torch::ScalarType t, const torch::Device& device, const std::string& what = "");

/// --dtype / torch_dtype value: float32|fp32, bfloat16|bf16, float16|fp16 (float64|fp64 when
/// allow_double). `field` names the option in the error.
torch::ScalarType parse_dtype_name(const std::string& s, const std::string& field, bool allow_double = true);
std::string dtype_name(torch::ScalarType t);

/// Casts every parameter of `m` that requires grad and is half precision to float32 in place
/// (set_data: every holder of the tensor sees it). Returns how many were cast.
int64_t promote_trainable_to_float32(torch::nn::Module& m);

/// Bytes of CPU tensors allocated on this thread while alive, and their peak (LibTorch's memory
/// profiling hook; memory-mapped checkpoint tensors are not allocations and do not count).
class TensorBytesMeter {
 public:
  TensorBytesMeter();
  ~TensorBytesMeter();
  TensorBytesMeter(const TensorBytesMeter&) = delete;
  TensorBytesMeter& operator=(const TensorBytesMeter&) = delete;
  int64_t current() const;
  int64_t peak() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
  void* guard_ = nullptr;
};

}  // namespace peft
