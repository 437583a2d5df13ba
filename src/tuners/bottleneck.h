// Shared by the bottleneck-shaped adapters (bottleneck.cpp: Houlsby / Pfeiffer / parallel;
// compacter.cpp: PHM adapters): placement through roles, AdapterDrop, the bottleneck size.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "peft/tuner.h"

namespace peft {

/// Resolves adapter_type (houlsby | pfeiffer | parallel) into target_modules through the model's
/// roles ("attn.o", "mlp.down", "mlp"), unless given, and adapter_drop_layers into
/// layers_to_transform, in the stored config of adapter `name`. `method` names the peft_type in errors.
void resolve_adapter_placement(PeftModel& pm, const std::string& name, const std::string& method);
/// FFN-output placements (role "mlp.down") by default: when the model's suffix for it also names
/// the attention output (BERT's "output.dense" ends attention.output.dense too), the attention
/// output is added to exclude_modules, unless target_modules or exclude_modules are given.
void exclude_shadowed_attention_output(PeftModel& pm, nlohmann::json& c);
/// Checks adapter_type, reduction_factor, bottleneck_size and adapter_drop_layers, naming the field.
void validate_adapter_placement(const nlohmann::json& c);
/// bottleneck_size, or hidden / reduction_factor (at least 1).
int64_t adapter_bottleneck_size(const nlohmann::json& c, int64_t hidden);
/// Input / output width of the Linear under a slot (through wrappers); `hidden` for other layers.
int64_t layer_input_dim(Layer* l, int64_t hidden);
int64_t layer_output_dim(Layer* l, int64_t hidden);

/// AdapterHub's composition blocks over the bottleneck adapters at one slot
/// (src/tuners/composition.cpp; docs/MULTI_ADAPTER.md).
struct AdapterBlock {
  std::string kind;                   // "average" | "fuse"
  std::vector<std::string> children;  // bottleneck adapters at the slot, each computed on the same input
  std::vector<double> weights;        // average: one per child
  double temperature = 1.0;           // fuse: the softmax temperature T
  bool init_weights = true;           // fuse: V = I, small Q, K (false: every matrix random)
};
/// Adds block `name` to the bottleneck wrapper at `layer` (found through other wrappers); `path`
/// names the slot in errors (no bottleneck wrapper there, a child it does not hold). While the
/// block is active its children act only through it.
void add_adapter_block(Layer* layer, const std::string& name, const AdapterBlock& block, const std::string& path);

}  // namespace peft
