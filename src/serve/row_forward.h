// The engine's one forward per step: row i of the batch runs with adapter row_adapters[i]
// ("__base__": the plain model), PeftModel::forward(in, row_adapters) (mixed-adapter batches).
// in.cache (if any) holds every row's keys and values and is extended in place.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "peft/model.h"

namespace peft::serve {

inline const char* kBaseAdapter = "__base__";  // PeftModel::kBaseRow

using RowForward = std::function<ModelOutput(const ModelInput& in, const std::vector<std::string>& row_adapters)>;

}  // namespace peft::serve
