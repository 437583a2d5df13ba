// Blockwise absmax quantization: 4-bit NF4/FP4 with optional double quantization, and the 8-bit
// dynamic-map quantization used for the nested constants (include/peft/quant.h).
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <array>
#include <cmath>

#include "peft/error.h"
#include "peft/quant.h"

namespace peft::quant {
namespace {

// Nearest code by the decision thresholds bitsandbytes' kernels compare against (x > t goes up;
// a NaN, from an all-zero block's 0 * inf, fails every comparison and takes code 0 as there).
// NF4: the midpoints of neighbouring table values, the code is the number of thresholds below x.
struct Nf4Rounder {
  std::array<float, 15> t;
  Nf4Rounder() {
    auto c = code_table_4bit(QuantType::NF4);
    for (int i = 0; i < 15; ++i)
      t[i] = static_cast<float>((static_cast<double>(c[i].item<float>()) + c[i + 1].item<float>()) / 2);
  }
  uint8_t operator()(float x) const {
    uint8_t k = 0;
    for (float v : t) k += x > v;
    return k;
  }
};
// FP4: sign bit from x < 0, magnitude by the kernel's thresholds between the sorted magnitudes
// 0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1 (their codes 0, 1, 6, 7, 4, 5, 2, 3).
uint8_t fp4_round(float x) {
  static const float t[7] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f};
  static const uint8_t code_of_rank[8] = {0, 1, 6, 7, 4, 5, 2, 3};
  uint8_t sign = x < 0 ? 8 : 0;
  float a = std::fabs(x);
  int r = 0;
  for (float v : t) r += a > v;
  return static_cast<uint8_t>(code_of_rank[r] + sign);
}

// bitsandbytes' dQuantize (non-stochastic): binary search over the sorted 256-value map with
// pivots 127 ± 64, 32, ..., 1, then the nearer of the last pivot and its neighbour.
uint8_t dynamic_round(const float* code, float x) {
  int pivot = 127, upper_pivot = 255, lower_pivot = 0;
  float lower = -1.0f, upper = 1.0f, val = code[pivot];
  for (int i = 64; i > 0; i >>= 1) {
    if (x > val) {
      lower_pivot = pivot;
      lower = val;
      pivot += i;
    } else {
      upper_pivot = pivot;
      upper = val;
      pivot -= i;
    }
    val = code[pivot];
  }
  if (upper_pivot == 255) upper = code[upper_pivot];
  if (lower_pivot == 0) lower = code[lower_pivot];
  if (x > val) return static_cast<uint8_t>(x > (upper + val) * 0.5f ? upper_pivot : pivot);
  return static_cast<uint8_t>(x < (lower + val) * 0.5f ? lower_pivot : pivot);
}

torch::Tensor flat_f32(const torch::Tensor& x) { return x.detach().to(torch::kCPU, torch::kFloat32).contiguous().view({-1}); }

template <class T>
void dequant_kernel(const Quant4bit& q, const float* absmax, T* out) {
  const int64_t n = q.numel(), bs = q.blocksize;
  auto code_t = q.code.to(torch::kCPU, torch::kFloat32).contiguous();
  float code[16];
  for (int i = 0; i < 16; ++i) code[i] = code_t.data_ptr<float>()[i];
  const uint8_t* p = q.packed.data_ptr<uint8_t>();
  at::parallel_for(0, q.blocks(), 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float a = absmax[b];
      const int64_t e = std::min(n, (b + 1) * bs);
      for (int64_t i = b * bs; i < e; i += 2) {
        const uint8_t byte = p[i / 2];
        out[i] = static_cast<T>(code[byte >> 4] * a);
        if (i + 1 < e) out[i + 1] = static_cast<T>(code[byte & 0x0F] * a);
      }
    }
  });
}

}  // namespace

Blockwise8 quantize_blockwise_8bit(const torch::Tensor& x, const torch::Tensor& code, int64_t blocksize) {
  PEFT_CHECK(blocksize > 0, "quantize_blockwise_8bit: block size must be positive");
  PEFT_CHECK(code.numel() == 256, "quantize_blockwise_8bit: the map must have 256 values, has ", code.numel());
  auto v = flat_f32(x);
  const int64_t n = v.numel(), blocks = (n + blocksize - 1) / blocksize;
  Blockwise8 q;
  q.blocksize = blocksize;
  q.code = code.to(torch::kCPU, torch::kFloat32).contiguous();
  q.codes = torch::empty({n}, torch::kUInt8);
  q.absmax = torch::empty({blocks}, torch::kFloat32);
  const float* src = v.data_ptr<float>();
  const float* map = q.code.data_ptr<float>();
  uint8_t* dst = q.codes.data_ptr<uint8_t>();
  float* am = q.absmax.data_ptr<float>();
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t s = b * blocksize, e = std::min(n, s + blocksize);
      float m = 0.0f;
      for (int64_t i = s; i < e; ++i) m = std::fmax(m, std::fabs(src[i]));
      am[b] = m;
      const float inv = 1.0f / m;
      for (int64_t i = s; i < e; ++i) dst[i] = dynamic_round(map, src[i] * inv);
    }
  });
  return q;
}

torch::Tensor dequantize_blockwise_8bit(const Blockwise8& q) {
  auto idx = q.codes.to(torch::kLong);
  auto vals = q.code.to(q.codes.device()).index_select(0, idx.view({-1}));
  auto blk = torch::arange(q.codes.numel(), idx.options()).div(q.blocksize, "floor");
  return vals * q.absmax.index_select(0, blk);
}

torch::Tensor pack_nibbles(const torch::Tensor& codes) {
  auto c = codes.to(torch::kCPU, torch::kUInt8).contiguous().view({-1});
  const int64_t n = c.numel();
  auto out = torch::zeros({(n + 1) / 2, 1}, torch::kUInt8);
  const uint8_t* s = c.data_ptr<uint8_t>();
  uint8_t* d = out.data_ptr<uint8_t>();
  for (int64_t i = 0; i < n; ++i) d[i / 2] |= static_cast<uint8_t>((s[i] & 0x0F) << (i % 2 ? 0 : 4));
  return out;
}

torch::Tensor unpack_nibbles(const torch::Tensor& packed, int64_t n) {
  auto p = packed.reshape({-1});
  auto hi = torch::bitwise_right_shift(p, 4), lo = torch::bitwise_and(p, 15);
  return torch::stack({hi, lo}, 1).reshape({-1}).slice(0, 0, n);
}

int64_t Quant4bit::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

int64_t Quant4bit::storage_bytes() const {
  int64_t b = packed.numel() * packed.element_size() + absmax.numel() * absmax.element_size() +
              code.numel() * code.element_size();
  if (nested) b += nested_absmax.numel() * 4 + nested_code.numel() * 4 + 4;  // + the float32 offset
  return b;
}

torch::Tensor Quant4bit::absmax_float() const {
  if (!nested) return absmax.to(torch::kFloat32);
  Blockwise8 s;
  s.codes = absmax;
  s.absmax = nested_absmax.to(torch::kFloat32);
  s.code = nested_code.to(torch::kFloat32);
  s.blocksize = nested_blocksize;
  return dequantize_blockwise_8bit(s) + static_cast<float>(offset);
}

void Quant4bit::validate(const std::string& what) const {
  const int64_t n = numel();
  PEFT_CHECK(n > 0, what, ": empty shape");
  PEFT_CHECK(blocksize > 0 && blocksize % 2 == 0, what, ": block size ", blocksize, " is not a positive even number");
  PEFT_CHECK(packed.defined() && packed.scalar_type() == torch::kUInt8, what, ": the packed data must be uint8");
  PEFT_CHECK(packed.numel() == (n + 1) / 2, what, ": ", packed.numel(), " packed bytes for ", n,
             " values (expected ", (n + 1) / 2, ")");
  PEFT_CHECK(code.defined() && code.numel() == 16 && code.is_floating_point(), what,
             ": quant_map must hold 16 float values, has ", code.defined() ? code.numel() : 0);
  PEFT_CHECK(absmax.defined() && absmax.dim() == 1 && absmax.numel() == blocks(), what, ": absmax has ",
             absmax.defined() ? absmax.numel() : 0, " values, expected ", blocks(), " (", n, " values in blocks of ",
             blocksize, ")");
  if (nested) {
    PEFT_CHECK(absmax.scalar_type() == torch::kUInt8, what, ": nested absmax codes must be uint8, got ",
               absmax.scalar_type());
    PEFT_CHECK(nested_blocksize > 0, what, ": nested_blocksize must be positive");
    const int64_t nb = (blocks() + nested_blocksize - 1) / nested_blocksize;
    PEFT_CHECK(nested_absmax.defined() && nested_absmax.numel() == nb && nested_absmax.is_floating_point(), what,
               ": nested_absmax has ", nested_absmax.defined() ? nested_absmax.numel() : 0, " values, expected ", nb,
               " (", blocks(), " absmax values in blocks of ", nested_blocksize, ")");
    PEFT_CHECK(nested_code.defined() && nested_code.numel() == 256 && nested_code.is_floating_point(), what,
               ": nested_quant_map must hold 256 float values, has ", nested_code.defined() ? nested_code.numel() : 0);
  } else {
    PEFT_CHECK(absmax.is_floating_point(), what, ": absmax must be float (uint8 absmax needs nested_absmax)");
  }
}

Quant4bit Quant4bit::to(torch::Device d) const {
  Quant4bit q = *this;
  q.packed = packed.to(d);
  q.absmax = absmax.to(d);
  q.code = code.to(d);
  if (nested) {
    q.nested_absmax = nested_absmax.to(d);
    q.nested_code = nested_code.to(d);
  }
  return q;
}

Quant4bit quantize_4bit(const torch::Tensor& w, QuantType type, int64_t blocksize, bool double_quant) {
  PEFT_CHECK(type != QuantType::Int8, "quantize_4bit: int8 is not a 4-bit type");
  PEFT_CHECK(blocksize > 0 && blocksize % 2 == 0, "quantize_4bit: block size ", blocksize, " must be positive and even");
  PEFT_CHECK(w.is_floating_point(), "quantize_4bit: expected a float tensor, got ", w.scalar_type());
  auto v = flat_f32(w);
  const int64_t n = v.numel();
  PEFT_CHECK(n > 0, "quantize_4bit: empty tensor");
  Quant4bit q;
  q.type = type;
  q.shape = w.sizes().vec();
  q.dtype = w.scalar_type();
  q.blocksize = blocksize;
  q.code = code_table_4bit(type);
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  auto absmax = torch::empty({blocks}, torch::kFloat32);
  q.packed = torch::zeros({(n + 1) / 2, 1}, torch::kUInt8);
  const float* src = v.data_ptr<float>();
  float* am = absmax.data_ptr<float>();
  uint8_t* dst = q.packed.data_ptr<uint8_t>();
  static const Nf4Rounder nf4;
  const bool is_nf4 = type == QuantType::NF4;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t s = b * blocksize, e = std::min(n, s + blocksize);
      float m = 0.0f;
      for (int64_t i = s; i < e; ++i) m = std::fmax(m, std::fabs(src[i]));
      am[b] = m;
      const float inv = 1.0f / m;  // multiply by the reciprocal, as the kernel does
      for (int64_t i = s; i < e; ++i) {
        const float x = src[i] * inv;
        const uint8_t c = is_nf4 ? nf4(x) : fp4_round(x);
        dst[i / 2] |= static_cast<uint8_t>(i % 2 ? c : c << 4);  // blocks are even-sized: no byte is shared
      }
    }
  });
  if (!double_quant) {
    q.absmax = absmax;
    return q;
  }
  // Double quantization (QLoRA §3): c2 = absmax - mean, quantized in blocks of 256.
  q.nested = true;
  q.offset = absmax.mean().item<float>();
  auto centred = absmax - static_cast<float>(q.offset);
  auto s = quantize_blockwise_8bit(centred, dynamic_map_8bit(), q.nested_blocksize);
  q.absmax = s.codes;
  q.nested_absmax = s.absmax;
  q.nested_code = s.code;
  return q;
}

torch::Tensor dequantize_4bit_reference(const Quant4bit& q, torch::ScalarType out_dtype) {
  const int64_t n = q.numel();
  auto codes = unpack_nibbles(q.packed, n).to(torch::kLong);
  auto vals = q.code.to(torch::kFloat32).index_select(0, codes);
  auto am = q.absmax_float().to(vals.device());
  auto blk = torch::arange(n, codes.options()).div(q.blocksize, "floor");
  return (vals * am.index_select(0, blk)).to(out_dtype).view(q.shape);
}

torch::Tensor dequantize_4bit(const Quant4bit& q, torch::ScalarType out_dtype) {
  if (!q.packed.device().is_cpu()) return dequantize_4bit_reference(q, out_dtype);
  auto am = q.absmax_float().contiguous();
  auto packed = q.packed.contiguous();
  Quant4bit qc = q;
  qc.packed = packed;
  auto out = torch::empty({q.numel()}, torch::TensorOptions().dtype(out_dtype));
  switch (out_dtype) {
    case torch::kFloat32: dequant_kernel<float>(qc, am.data_ptr<float>(), out.data_ptr<float>()); break;
    case torch::kBFloat16: dequant_kernel<c10::BFloat16>(qc, am.data_ptr<float>(), out.data_ptr<c10::BFloat16>()); break;
    case torch::kFloat16: dequant_kernel<c10::Half>(qc, am.data_ptr<float>(), out.data_ptr<c10::Half>()); break;
    default: fail("dequantize_4bit: output dtype must be float32, bfloat16 or float16, got ", out_dtype);
  }
  return out.view(q.shape);
}

}  // namespace peft::quant
