// Shared by the bottleneck-shaped adapters (bottleneck.cpp: Houlsby / Pfeiffer / parallel;
// compacter.cpp: PHM adapters): placement through roles, AdapterDrop, the bottleneck size.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

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

}  // namespace peft
