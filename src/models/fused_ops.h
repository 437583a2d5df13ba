// Fused forms of two half-precision Llama sublayers that save less for the backward than the
// composite ops' autograd does (issue 14: activation memory of a bfloat16 base). The forward
// runs the same ATen ops in the same order as the composite, so the outputs are bit-identical.
#pragma once
#include <torch/types.h>

namespace peft {

/// RMSNorm (Zhang & Sennrich 2019) as transformers' LlamaRMSNorm computes it: h = x in its compute
/// dtype (float32 for a half x), r = rsqrt(mean(h^2, -1) + eps), y = weight * (h r in x's dtype).
/// On a half x with a graph it saves x (half) and r ([..., 1], float32) instead of the float32
/// copy h: half the bytes per element; backward in float32: dh = r (g - h r^2 mean(g h, -1)),
/// g = float32(half(dy weight)); dweight = sum dy half(h r). Other dtypes: the composite's autograd.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

/// silu(gate) * up (the SwiGLU MLP, Shazeer 2020), saving gate and up only (the composite also
/// saves silu(gate)); the backward recomputes silu(gate) and uses ATen's silu_backward, so its
/// gradients equal autograd's on the composite bit for bit.
torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up);

}  // namespace peft
