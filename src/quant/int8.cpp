// LLM.int8() row-wise weight quantization (include/peft/quant.h).
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/quant.h"

namespace peft::quant {

QuantInt8 quantize_int8_rowwise(const torch::Tensor& w) {
  PEFT_CHECK(w.dim() == 2 && w.is_floating_point(), "quantize_int8_rowwise: expected a 2-D float weight, got ",
             w.sizes(), " ", w.scalar_type());
  auto f = w.detach().to(torch::kFloat32);
  QuantInt8 q;
  q.dtype = w.scalar_type();
  q.SCB = f.abs().amax(1).contiguous();
  // Dettmers et al. 2022 eq. 1 per row: round(127 / absmax * W); an all-zero row stays 0.
  auto scaled = torch::round(f * (127.0f / q.SCB).unsqueeze(1));
  q.CB = torch::where(q.SCB.unsqueeze(1) > 0, scaled, torch::zeros_like(scaled)).to(torch::kInt8).contiguous();
  return q;
}

torch::Tensor dequantize_int8(const QuantInt8& q, torch::ScalarType out_dtype) {
  return (q.CB.to(torch::kFloat32) * q.SCB.to(torch::kFloat32).unsqueeze(1) * (1.0f / 127.0f)).to(out_dtype);
}

void QuantInt8::validate(const std::string& what) const {
  PEFT_CHECK(CB.defined() && CB.dim() == 2 && CB.scalar_type() == torch::kInt8, what,
             ": the int8 weight must be a 2-D int8 tensor");
  PEFT_CHECK(SCB.defined() && SCB.dim() == 1 && SCB.numel() == CB.size(0) && SCB.is_floating_point(), what,
             ": SCB has ", SCB.defined() ? SCB.numel() : 0, " values, expected one float per row (", CB.size(0), ")");
}

QuantInt8 QuantInt8::to(torch::Device d) const {
  QuantInt8 q = *this;
  q.CB = CB.to(d);
  q.SCB = SCB.to(d);
  return q;
}

}  // namespace peft::quant
