// Quantized storage of frozen weights, exactly as bitsandbytes defines it (layer between io and
// models: tensors in, tensors out; no model knowledge).
//
// 4-bit (QLoRA, Dettmers et al. 2023, arXiv:2305.14314 §3): a weight of n values is cut into
// blocks of 64; each block keeps its absolute maximum (absmax, float32) and every value becomes the
// index of the nearest entry of a 16-value code table after division by absmax (NF4: quantiles of
// N(0, 1), the paper's appendix E; FP4: bitsandbytes' 1-sign 2-exponent 1-mantissa float). Two
// indices share a byte: the even element in the high nibble, the odd one in the low nibble.
// Double quantization (§3 "Double Quantization") stores absmax - mean(absmax) as 8-bit indices of
// bitsandbytes' dynamic map in blocks of 256, with one float32 absmax per block and the mean as a
// float32 offset: 8/64 + 32/(64*256) bits per parameter instead of 32/64.
//
// 8-bit (LLM.int8(), Dettmers et al. 2022, arXiv:2208.07339 §3.1 "vector-wise quantization",
// weight side only): per output row, SCB = max|W_row|, CB = round(127 W / SCB) as int8;
// W ≈ CB * SCB / 127. The outlier decomposition of activations (mixed-precision matmul of the
// columns with |x| >= llm_int8_threshold) is not implemented: activations stay in the compute
// dtype and only the weight is quantized.
//
//   auto q = peft::quant::quantize_4bit(W, peft::quant::QuantType::NF4, 64, /*double_quant=*/true);
//   torch::Tensor W2 = peft::quant::dequantize_4bit(q, torch::kBFloat16);  // W's shape
#pragma once
#include <torch/types.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "peft/io.h"

namespace peft::quant {

enum class QuantType { NF4, FP4, Int8 };
/// "nf4", "fp4", "int8".
std::string quant_type_name(QuantType t);
/// Inverse of quant_type_name; anything else is a peft::Error naming `what` and the value.
QuantType quant_type_from_name(const std::string& s, const std::string& what = "quant type");

/// The 16 values of a 4-bit code (float32 [16]) indexed by the 4-bit code, as bitsandbytes'
/// get_4bit_type builds them (FP4: the float values divided by their max, 12).
torch::Tensor code_table_4bit(QuantType t);
/// bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): the sorted
/// 256-value map of the nested (double) quantization, float32 [256].
torch::Tensor dynamic_map_8bit();
/// Half the largest gap between neighbouring values of a sorted code: the rounding error bound
/// (times absmax) of nearest-value quantization inside [min, max] of the code.
double max_half_gap(const torch::Tensor& code);

/// 8-bit blockwise quantization onto a sorted 256-value map (bitsandbytes' quantize_blockwise).
struct Blockwise8 {
  torch::Tensor codes;   // uint8 [n]
  torch::Tensor absmax;  // float32 [ceil(n / blocksize)]
  torch::Tensor code;    // float32 [256] (sorted)
  int64_t blocksize = 256;
};
/// x: any float tensor (flattened, computed in float32). Nearest map entry of x / absmax.
Blockwise8 quantize_blockwise_8bit(const torch::Tensor& x, const torch::Tensor& code, int64_t blocksize);
/// float32 [n]: code[codes[i]] * absmax[i / blocksize].
torch::Tensor dequantize_blockwise_8bit(const Blockwise8& q);

/// A 4-bit quantized tensor in bitsandbytes' layout (QuantState plus the packed data).
struct Quant4bit {
  QuantType type = QuantType::NF4;
  std::vector<int64_t> shape;             // of the original tensor
  torch::ScalarType dtype = torch::kFloat32;  // of the original tensor (quant_state "dtype")
  int64_t blocksize = 64;
  torch::Tensor packed;  // uint8 [(n + 1) / 2, 1]
  torch::Tensor absmax;  // float32 [blocks], or uint8 [blocks] when nested
  torch::Tensor code;    // float32 [16] (quant_map)
  bool nested = false;
  torch::Tensor nested_absmax;  // float32 [ceil(blocks / nested_blocksize)]
  torch::Tensor nested_code;    // float32 [256] (nested_quant_map)
  int64_t nested_blocksize = 256;
  torch::ScalarType nested_dtype = torch::kFloat32;
  double offset = 0;  // nested_offset: mean of the absmax values before their quantization

  int64_t numel() const;
  int64_t blocks() const { return (numel() + blocksize - 1) / blocksize; }
  /// Bytes of every stored tensor (packed data and constants).
  int64_t storage_bytes() const;
  /// The per-block absmax as float32 [blocks] (dequantized when nested).
  torch::Tensor absmax_float() const;
  /// Checks every size and dtype against the others; errors name `what` (a file and tensor).
  void validate(const std::string& what) const;
  Quant4bit to(torch::Device device) const;
};

/// Quantizes w (any float dtype, any shape; values read as float32) to 4 bits.
Quant4bit quantize_4bit(const torch::Tensor& w, QuantType type, int64_t blocksize = 64, bool double_quant = false);
/// The tensor back in `out_dtype` (float32, bfloat16 or float16), in q.shape. CPU: one pass over
/// the packed bytes; other devices: dequantize_4bit_reference.
torch::Tensor dequantize_4bit(const Quant4bit& q, torch::ScalarType out_dtype = torch::kFloat32);
/// Dequantization written with tensor ops only (unpack nibbles, gather the code, scale): any
/// device, and the independent reference of the fast CPU path in the tests.
torch::Tensor dequantize_4bit_reference(const Quant4bit& q, torch::ScalarType out_dtype = torch::kFloat32);

/// Two 4-bit codes per byte, the even index in the high nibble (codes: uint8 [n] in 0..15);
/// an odd n pads the last low nibble with 0. Returns uint8 [(n + 1) / 2, 1].
torch::Tensor pack_nibbles(const torch::Tensor& codes);
/// Inverse of pack_nibbles: uint8 [n].
torch::Tensor unpack_nibbles(const torch::Tensor& packed, int64_t n);

/// LLM.int8() weight format: CB int8 [rows, cols], SCB float32 [rows] (row absmax).
struct QuantInt8 {
  torch::Tensor CB, SCB;
  torch::ScalarType dtype = torch::kFloat32;  // of the original weight
  int64_t numel() const { return CB.numel(); }
  int64_t storage_bytes() const { return CB.numel() + SCB.numel() * 4; }
  void validate(const std::string& what) const;
  QuantInt8 to(torch::Device device) const;
};
/// w: [rows, cols] float. CB = round(w * (127 / SCB)) (round half to even), SCB = max |w_row|.
QuantInt8 quantize_int8_rowwise(const torch::Tensor& w);
/// CB * SCB / 127 in `out_dtype`.
torch::Tensor dequantize_int8(const QuantInt8& q, torch::ScalarType out_dtype = torch::kFloat32);

// ---- Serialization: transformers' state-dict layout of bitsandbytes layers ------------------
// 4-bit, for a weight key K ("model.layers.0.self_attn.q_proj.weight"):
//   K uint8 [n/2, 1], K.absmax, K.quant_map float32 [16], and when nested K.nested_absmax,
//   K.nested_quant_map float32 [256]; K.quant_state.bitsandbytes__<nf4|fp4>: uint8 bytes of the
//   JSON {"quant_type", "blocksize", "dtype", "shape"[, "nested_blocksize", "nested_dtype",
//   "nested_offset"]} (bitsandbytes' QuantState.as_dict(packed=True)).
// 8-bit, for a module prefix P: P.weight int8 [out, in], P.SCB float32 [out], P.weight_format
//   uint8 scalar 0 ("row"; other layouts are refused).

/// Adds the tensors of q under weight key `key` to *out.
void write_4bit(const Quant4bit& q, const std::string& key, TensorMap* out);
/// Whether `weights` holds a 4-bit quant_state (or any K.absmax / K.quant_map) for key `key`.
bool has_4bit(const TensorMap& weights, const std::string& key);
/// Reads the tensors of weight key `key`; `source` (the file) names errors: a missing
/// quant_state, an unknown quant type, a wrong absmax / data count, bad JSON.
Quant4bit read_4bit(const TensorMap& weights, const std::string& key, const std::string& source);
/// The keys read_4bit consumes for `key` that are present in `weights`.
std::vector<std::string> keys_4bit(const TensorMap& weights, const std::string& key);

/// Adds P.weight, P.SCB, P.weight_format for module prefix `prefix`.
void write_int8(const QuantInt8& q, const std::string& prefix, TensorMap* out);
bool has_int8(const TensorMap& weights, const std::string& prefix);
QuantInt8 read_int8(const TensorMap& weights, const std::string& prefix, const std::string& source);
std::vector<std::string> keys_int8(const TensorMap& weights, const std::string& prefix);

// ---- BitsAndBytesConfig (config.json "quantization_config", transformers 4.37 names) --------
struct QuantConfig {
  QuantType type = QuantType::NF4;
  bool double_quant = false;
  torch::ScalarType compute_dtype = torch::kFloat32;  // bnb_4bit_compute_dtype (also used for int8)
  int64_t blocksize = 64;
  std::vector<std::string> skip_modules;  // llm_int8_skip_modules (substring of a module path)
  double int8_threshold = 6.0;           // llm_int8_threshold: recorded, outliers not decomposed
  bool is_4bit() const { return type != QuantType::Int8; }
  /// BitsAndBytesConfig.to_dict() as transformers writes it into config.json.
  nlohmann::json to_json() const;
  /// Parses a quantization_config; errors name `source` and the field (quant_method other than
  /// "bitsandbytes", both or neither of load_in_4bit/8bit, an unknown quant type or dtype,
  /// llm_int8_has_fp16_weight, a quant storage other than uint8).
  static QuantConfig from_json(const nlohmann::json& j, const std::string& source);
};
/// "float32" | "bfloat16" | "float16" (and fp32/bf16/fp16) -> dtype; errors name `what`.
torch::ScalarType compute_dtype_from_name(const std::string& s, const std::string& what);
std::string dtype_name(torch::ScalarType t);

}  // namespace peft::quant
