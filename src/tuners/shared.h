// Tensors an adapter holds once for the whole model (VeRA's projections, Compacter's PHM rules),
// kept on an InputAdapter that leaves the input alone and saved under base_model.<name>.
#pragma once
#include <torch/torch.h>

#include <string>

#include "peft/error.h"
#include "peft/io.h"

namespace peft {

/// Copies each tensor of `into` (saved key -> the model's tensor) from `from`, checking presence
/// and shape; errors name `source`, the key and `method`.
inline void load_shared_tensors(const TensorMap& into, const TensorMap& from, const std::string& source,
                                const std::string& method) {
  torch::NoGradGuard ng;
  for (auto& kv : into) {
    auto it = from.find(kv.first);
    PEFT_CHECK(it != from.end(), source, ": tensor '", kv.first, "' is missing (", method, " saves its shared tensors)");
    PEFT_CHECK(it->second.sizes() == kv.second.sizes(), source, ": tensor '", kv.first, "' has shape ",
               it->second.sizes(), ", expected ", kv.second.sizes());
    kv.second.detach().copy_(it->second);
  }
}

}  // namespace peft
