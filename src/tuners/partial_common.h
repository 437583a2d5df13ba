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
inline nlohmann::json common_defaults(const std::string& type) {
  return {{"base_model_name_or_path", nullptr}, {"exclude_modules", nullptr}, {"inference_mode", false},
          {"layers_pattern", nullptr},          {"layers_to_transform", nullptr}, {"modules_to_save", nullptr},
          {"peft_cpp_format_version", 1},       {"peft_type", type},          {"target_modules", nullptr},
          {"task_type", nullptr}};
}
inline void check_version(const nlohmann::json& c) {
  PEFT_CHECK(c["peft_cpp_format_version"] == 1, "adapter config: field 'peft_cpp_format_version' ",
             c["peft_cpp_format_version"].dump(), " is not supported (this build reads version 1)");
}
/// Checks that field `key` is a number in (0, 1].
inline void check_fraction(const nlohmann::json& c, const char* key) {
  PEFT_CHECK(c[key].is_number() && c[key].get<double>() > 0 && c[key].get<double>() <= 1, "adapter config: field '",
             key, "' must be in (0, 1], got ", c[key].dump());
}
/// Checks that field `key` is a positive integer.
inline void check_positive_int(const nlohmann::json& c, const char* key) {
  PEFT_CHECK(c[key].is_number_integer() && c[key].get<int64_t>() > 0, "adapter config: field '", key,
             "' must be a positive integer, got ", c[key].dump());
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
