// The engine's one forward per step: row i of the batch runs with adapter row_adapters[i]
// ("__base__": the plain model), as PeftModel::forward(in, row_adapters) of the mixed-adapter
// batches. in.cache (if any) holds every row's keys and values and is extended in place.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "peft/model.h"
#include "peft/tuner.h"

namespace peft::serve {

inline const char* kBaseAdapter = "__base__";

using RowForward = std::function<ModelOutput(const ModelInput& in, const std::vector<std::string>& row_adapters)>;

/// Rows grouped by adapter, one set_adapter + forward per group (inputs, mask, positions and
/// cache rows gathered per group, results scattered back). Every row gets exactly what a batch
/// of its group alone gives.
RowForward grouped_row_forward(std::shared_ptr<PeftModel> pm);

}  // namespace peft::serve
