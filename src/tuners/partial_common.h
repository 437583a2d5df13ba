// Helpers shared by the partial (selective) fine-tuning tuners: src/tuners/partial.cpp (BitFit,
// LN tuning, layer freezing, SPARSE_DELTA) and src/tuners/sparse.cpp (FISH, Child-Tuning, diff
// pruning, LT-SFT). Our types write adapter_config.json with "peft_cpp_format_version": 1.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "peft/error.h"
#include "peft/tuner.h"
#include "peft/precision.h"

namespace peft {
namespace partial {

inline torch::ScalarType dtype_of(Layer& l) {
  for (auto& p : l.parameters()) return trainable_dtype(p.scalar_type());
  return torch::kFloat32;
}
/// The field table of our partial types: `own` plus the file version and the targeting fields
/// (all written to adapter_config.json).
inline std::vector<ConfigField> partial_fields(std::vector<ConfigField> own) {
  own.push_back(ConfigField{"peft_cpp_format_version", FieldType::Int, 1, "the file layout's version (this build reads 1)"}
                    .one_of({1}));
  return with_common(std::move(own), {"target_modules", "exclude_modules", "layers_to_transform", "layers_pattern",
                                      "modules_to_save", "base_model_name_or_path", "task_type", "inference_mode"});
}
/// A density: the fraction of entries that train, in (0, 1].
inline ConfigField density_field(double def, const std::string& help) {
  return ConfigField{"density", FieldType::Number, def, help}.fraction();
}
// SEQ_CLS: the head trains too (as peft does for every method).
inline void head_to_save(PeftModel& pm, nlohmann::json& c) {
  auto roles = pm.model->roles();
  if (c["modules_to_save"].is_null() && pm.model->task() == TaskType::SeqCls && roles.count(role::kHead))
    c["modules_to_save"] = {roles[role::kHead]};
}
/// Default targets of the weight-delta methods: every attention and MLP projection.
inline void target_projections(PeftModel& pm, nlohmann::json& c) {
  head_to_save(pm, c);
  if (!c["target_modules"].is_null()) return;
  auto roles = pm.model->roles();
  nlohmann::json t = nlohmann::json::array();
  for (auto r : {role::kAttnQ, role::kAttnK, role::kAttnV, role::kAttnQkv, role::kAttnO, role::kMlpGate, role::kMlpUp, role::kMlpDown})
    if (roles.count(r)) t.push_back(roles[r]);
  c["target_modules"] = t;
}

}  // namespace partial
}  // namespace peft
