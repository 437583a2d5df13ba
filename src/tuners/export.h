// Inference-form export: a trained adapter written as the simpler, standard adapter it equals
// at inference, so that it loads without the training-time machinery (and, where the target is
// a Python peft type, in Python peft too). Used by `peft export` (src/cli/export.cpp).
//
//   ADAMIX -> BOTTLENECK: the experts' weights averaged (Wang et al. 2022, sec. 3.4), one
//             Pfeiffer-placed adapter per wrapped module (src/tuners/adamix.cpp).
//
// Methods register their exporter next to their tuner (register_adapter_exporter); the
// transform works on the saved files alone, no model needed.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "peft/io.h"

namespace peft {

struct ExportedAdapter {
  nlohmann::json config;  // a complete adapter_config.json of the target type
  TensorMap tensors;      // its adapter_model.safetensors
};
/// (config as read by read_adapter_config, saved tensors, file name for errors) -> inference form.
using AdapterExporter = std::function<ExportedAdapter(const nlohmann::json&, const TensorMap&, const std::string&)>;

bool register_adapter_exporter(const std::string& peft_type, AdapterExporter fn);
/// peft_types that have an inference form.
std::vector<std::string> exportable_types();
/// The inference form of an adapter; errors naming the peft_type (and the exportable ones) when it has none.
ExportedAdapter export_adapter(const nlohmann::json& cfg, const TensorMap& tensors, const std::string& source);
/// Reads the adapter folder `in`, writes its inference form to `out` (atomic file writes).
/// Returns the peft_type written.
std::string export_adapter_dir(const std::string& in, const std::string& out);

}  // namespace peft
