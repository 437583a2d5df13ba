// load_model with a step between building the model and filling its weights (models only): the
// quantized loaders (models/quant_linear.h) replace Linear slots there.
#pragma once
#include <functional>
#include <string>

#include "peft/model.h"

namespace peft {

/// Called with the freshly built model, the checkpoint's tensors (which it may consume) and the
/// model folder, before load_weights.
using LoadHook = std::function<void(PretrainedModel& m, TensorMap& weights, const std::string& source)>;
ModelPtr load_model_with_hook(const std::string& path, const LoadOptions& opts, const LoadHook& hook);

}  // namespace peft
