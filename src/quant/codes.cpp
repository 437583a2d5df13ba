// Code tables of bitsandbytes' 4-bit types and its 8-bit dynamic map (include/peft/quant.h).
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "peft/error.h"
#include "peft/quant.h"

namespace peft::quant {

std::string quant_type_name(QuantType t) {
  switch (t) {
    case QuantType::NF4: return "nf4";
    case QuantType::FP4: return "fp4";
    case QuantType::Int8: return "int8";
  }
  return "?";
}

QuantType quant_type_from_name(const std::string& s, const std::string& what) {
  if (s == "nf4") return QuantType::NF4;
  if (s == "fp4") return QuantType::FP4;
  if (s == "int8") return QuantType::Int8;
  fail(what, ": unknown quant type '", s, "' (supported: nf4, fp4, int8)");
}

torch::Tensor code_table_4bit(QuantType t) {
  if (t == QuantType::NF4) {
    // QLoRA appendix E: the 16 NF4 values (quantiles of N(0, 1) scaled to [-1, 1], with an exact 0).
    static const float nf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                                  -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                  0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
                                  0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
    return torch::from_blob(const_cast<float*>(nf4), {16}, torch::kFloat32).clone();
  }
  PEFT_CHECK(t == QuantType::FP4, "code_table_4bit: int8 has no 4-bit code table");
  // Code bits s e1 e0 m: 0b000 = 0, 0b001 = 0.0625 (subnormal), then 2^(bias-e) (1 + m/2) with
  // e = 2 e1 + e0 and bias 3: 8, 12, 4, 6, 2, 3; the sign bit negates. Divided by the max (12).
  static const float fp4[16] = {0.0f,  0.0625f,  8.0f,  12.0f,  4.0f,  6.0f,  2.0f,  3.0f,
                                -0.0f, -0.0625f, -8.0f, -12.0f, -4.0f, -6.0f, -2.0f, -3.0f};
  auto v = torch::from_blob(const_cast<float*>(fp4), {16}, torch::kFloat32).clone();
  return v / v.abs().max();
}

torch::Tensor dynamic_map_8bit() {
  // Dettmers 2016 (arXiv:1511.04561) dynamic tree type, signed, 7 exponent bits: for exponent
  // i = 0..6 the midpoints of linspace(0.1, 1, 2^i + 1) scaled by 10^(i - 6), both signs, plus
  // 0 and 1. Built with float32 tensor ops as bitsandbytes' create_dynamic_map does.
  std::vector<float> data;
  const int max_exp = 7, non_sign_bits = 7;
  for (int i = 0; i < max_exp; ++i) {
    int64_t items = (1LL << (i + non_sign_bits - max_exp)) + 1;
    auto b = torch::linspace(0.1, 1.0, items, torch::kFloat32);
    auto means = (b.slice(0, 0, items - 1) + b.slice(0, 1)) / 2.0;
    double scale = std::pow(10.0, -(max_exp - 1) + i);
    auto pos = (means * scale).contiguous(), neg = (means * -scale).contiguous();
    for (int64_t k = 0; k < pos.numel(); ++k) data.push_back(pos.data_ptr<float>()[k]);
    for (int64_t k = 0; k < neg.numel(); ++k) data.push_back(neg.data_ptr<float>()[k]);
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  TORCH_INTERNAL_ASSERT(data.size() == 256, "dynamic map: ", data.size(), " values");
  std::sort(data.begin(), data.end());
  return torch::from_blob(data.data(), {256}, torch::kFloat32).clone();
}

double max_half_gap(const torch::Tensor& code) {
  auto s = std::get<0>(code.to(torch::kFloat64).flatten().sort());
  return ((s.slice(0, 1) - s.slice(0, 0, s.numel() - 1)).max() / 2).item<double>();
}

torch::ScalarType compute_dtype_from_name(const std::string& s, const std::string& what) {
  if (s == "float32" || s == "fp32") return torch::kFloat32;
  if (s == "bfloat16" || s == "bf16") return torch::kBFloat16;
  if (s == "float16" || s == "fp16") return torch::kFloat16;
  fail(what, ": expected float32, bfloat16 or float16, got '", s, "'");
}

std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    case torch::kFloat64: return "float64";
    default: return c10::toString(t);
  }
}

}  // namespace peft::quant
