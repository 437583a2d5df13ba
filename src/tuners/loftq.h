// LoftQ initialisation (Li et al. 2023, "LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large
// Language Models", arXiv:2310.08659, Algorithm 1): alternate T times
//   Q_t = quantize(W - B_{t-1} A_{t-1}),   B_t A_t = SVD_r(W - dequant(Q_t)),
// so that dequant(Q_T) + B_T A_T approximates W better than dequant(quantize(W)) alone. The base
// keeps dequant(Q_T), the adapter starts from (A_T, B_T).
//
// Conventions of Python peft 0.13.2 (utils/loftq_utils.py), kept so adapters interchange:
// - 4 bits: bitsandbytes' NF4, blocks of 64, no double quantization (peft's path when
//   bitsandbytes is installed); 2 and 8 bits: peft's NFQuantizer, the normal map of 2^bits values
//   (offset 0.9677083, one more positive value) with per-block absmax, blocks of 64, nearest entry.
// - A = sqrt(S_r) Vh_r, B = U_r sqrt(S_r); the LoRA scaling alpha / r is NOT folded in (peft sets
//   lora_A / lora_B to these factors as they are), so dequant(Q) + B A ≈ W holds for alpha == r.
// - loftq_iter = 1 leaves the base at dequant(quantize(W)), which is what quantizing the float
//   checkpoint with nf4 (blocks of 64, no double quantization) stores.
#pragma once
#include <torch/types.h>

#include <nlohmann/json.hpp>

namespace peft {

struct LoftQResult {
  torch::Tensor base;  // dequant(Q_T), float32 [out, in]
  torch::Tensor A;     // [r, in] (undefined when factors were not asked for)
  torch::Tensor B;     // [out, r]
};

/// W: [out, in] (any float dtype; computed in float32). bits: 2, 4 or 8; iters >= 1. With
/// `factors` false (loading a trained adapter: its factors come from the file) the last SVD is
/// skipped.
LoftQResult loftq_decompose(const torch::Tensor& W, int64_t bits, int64_t rank, int64_t iters, bool factors = true);

/// peft's NFQuantizer round trip at `bits` (2 or 8; also 4, for tests): the normal map, absmax
/// per block of `blocksize`, nearest entry. Returns the dequantized tensor (float32, W's shape).
torch::Tensor normal_float_round_trip(const torch::Tensor& W, int64_t bits, int64_t blocksize = 64);
/// NFQuantizer.create_normal_map(offset=0.9677083, symmetric=False, num_bits=bits): float32 [2^bits].
torch::Tensor normal_float_map(int64_t bits);

/// Whether an adapter config's initialisation reads the frozen float weights and rewrites them
/// (LoRA with init_lora_weights "loftq"). A quantized layer keeps no float weight, so a base that
/// is to be quantized must be loaded in float and quantized after such an adapter is added
/// (`peft train`, and the commands that load adapters, do so).
bool init_rewrites_base(const nlohmann::json& adapter_config);

}  // namespace peft
