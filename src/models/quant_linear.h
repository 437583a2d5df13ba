// A frozen Linear whose weight is stored quantized (include/peft/quant.h) and dequantized on the
// fly to a compute dtype inside forward (QLoRA §3: storage NF4/FP4/int8, compute bfloat16 or
// float32). It is a peft::Linear, so every tuner wraps it through the slot unchanged: in/out
// features and the bias are those of the original layer; its `weight` member is an empty
// float32 tensor (the quantized data lives in q4 / q8), so methods that read or change the base
// weight refuse it (PeftModel::merge, LoRA's PiSSA/OLoRA/DoRA/Delta-LoRA inits say so).
//
// The backward computes the input gradient only (dequantizing again instead of keeping the
// dequantized weight alive between forward and backward, as bitsandbytes' MatMul4Bit does).
//
//   peft::quant::QuantConfig c; c.type = peft::quant::QuantType::NF4; c.double_quant = true;
//   auto rep = peft::quantize_model(*model, c);   // every Linear slot but the head
//   std::cerr << rep.to_string() << "\n";          // bits per parameter
#pragma once
#include <functional>
#include <string>

#include "peft/model.h"
#include "peft/module.h"
#include "peft/quant.h"

namespace peft {

class QuantLinear : public Linear {
 public:
  /// Quantizes `w` (the layer's weight in its storage layout: [in, out] when conv1d) with `cfg`;
  /// `bias` (may be undefined) becomes this layer's frozen bias parameter.
  QuantLinear(int64_t in, int64_t out, const torch::Tensor& w, bool conv1d, const torch::Tensor& bias,
              const quant::QuantConfig& cfg);
  /// A layer whose quantized weight is read later (load_quantized_layers).
  QuantLinear(int64_t in, int64_t out, bool has_bias, const quant::QuantConfig& cfg);

  torch::Tensor forward(const torch::Tensor& x) override;
  std::shared_ptr<Layer> clone_layer() const override;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;

  /// The weight [out, in] in `dtype` (float32, bfloat16, float16).
  torch::Tensor dequantized_weight(torch::ScalarType dtype) const;
  bool loaded() const { return q4.packed.defined() || q8.CB.defined(); }
  int64_t numel() const { return in_features * out_features; }
  /// Bytes of the stored weight and its constants (bias not counted).
  int64_t storage_bytes() const;
  /// Sets the quantized weight after checking its shape is [out, in]; `what` names errors.
  void set_4bit(quant::Quant4bit q, const std::string& what);
  void set_int8(quant::QuantInt8 q, const std::string& what);
  /// Quantizes `w_out_in` ([out, in], any float dtype) into this layer in its own format (type,
  /// block size, double quantization): what merging an adapter into a quantized base stores.
  void requantize(const torch::Tensor& w_out_in);

  quant::QuantType type;
  torch::ScalarType compute_dtype;
  quant::Quant4bit q4;  // 4-bit types
  quant::QuantInt8 q8;  // int8
};

/// The quantized layer under `l` (looking through tuner wrappers' base_layer slots is the
/// caller's job); nullptr when `l` is not one.
inline const QuantLinear* as_quantized(const Layer* l) { return dynamic_cast<const QuantLinear*>(l); }

/// What quantize_model did.
struct QuantizeReport {
  int64_t layers = 0, params = 0, bytes = 0;  // quantized Linear layers, their weight entries, stored bytes
  int64_t table_bytes = 0;                    // per-layer code tables (quant_map, nested_quant_map) within bytes
  std::vector<std::string> skipped;           // Linear slots left in float (head, skip list, tied)
  double bits_per_param() const { return params ? 8.0 * bytes / params : 0; }
  /// Bits per parameter without the per-layer code tables (the QLoRA paper's count).
  double bits_per_param_blocks() const { return params ? 8.0 * (bytes - table_bytes) / params : 0; }
  std::string to_string() const;
};

/// Whether the Linear slot at `path` stays in float: the model's head (role "head", its
/// sub-modules too), a name of cfg.skip_modules contained in the path (transformers' rule).
bool quantization_skips(const PretrainedModel& m, const quant::QuantConfig& cfg, const std::string& path);

/// Replaces every Linear slot of `m` (walking the slots; no family names) by a QuantLinear, except
/// those quantization_skips() names and Linears whose weight is shared with another parameter;
/// each float weight is released once quantized. Records cfg as m.config["quantization_config"].
/// `prepare` (optional) is called on each float Linear right before it is quantized: the bench
/// fills an unwritten weight there (models/skip_init.h), one layer resident at a time.
QuantizeReport quantize_model(PretrainedModel& m, const quant::QuantConfig& cfg,
                              const std::function<void(Linear&)>& prepare = nullptr);

/// Quantization on load (load_model_quantized): the same slot choice as quantize_model, but each
/// layer is quantized straight from the checkpoint tensor `weights[path + ".weight"]`, which is
/// then dropped from `weights` (the float32 model is never built as a whole from the file).
QuantizeReport quantize_from_checkpoint(PretrainedModel& m, const quant::QuantConfig& cfg, TensorMap* weights,
                                        const std::string& source);

/// Pre-quantized checkpoints (config.json with quantization_config): replaces the Linear slots
/// whose tensors in `weights` are bitsandbytes-quantized by QuantLinear shells to be filled by
/// load_quantized_layers.
void prepare_quantized_slots(PretrainedModel& m, const quant::QuantConfig& cfg, const TensorMap& weights,
                             const std::string& source);

/// For PretrainedModel::load_weights: fills every not-yet-loaded QuantLinear of `m` from its
/// bitsandbytes tensors in `weights`, and returns the tensors left for the ordinary parameters.
/// Removes each QuantLinear's placeholder `weight` from *targets (name -> tensor to fill).
TensorMap load_quantized_layers(PretrainedModel& m, const TensorMap& weights, const std::string& source,
                                std::map<std::string, torch::Tensor>* targets);

/// For PretrainedModel::state_dict: replaces each QuantLinear's placeholder `weight` in *sd by
/// its bitsandbytes tensors.
void add_quantized_state(const PretrainedModel& m, TensorMap* sd);

/// The inverse for merge_and_unload into a float model: replaces every QuantLinear slot of `m`
/// (under tuner wrappers too: their base_layer is a slot) by a float Linear holding the
/// dequantized weight in `dtype`, and drops config["quantization_config"]. Returns the count.
int64_t dequantize_model(PretrainedModel& m, torch::ScalarType dtype);

/// Loads a float checkpoint and quantizes its Linear layers on the way (quantize_from_checkpoint).
/// *report (optional) receives what was quantized.
ModelPtr load_model_quantized(const std::string& path, const quant::QuantConfig& cfg, const LoadOptions& opts = {},
                              QuantizeReport* report = nullptr);

}  // namespace peft
