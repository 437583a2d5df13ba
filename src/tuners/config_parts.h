// An adapter config and, for a COMPOSITE, each of its components (recursively): where the
// settings the training loop reads per adapter sit (AdaMix's consistency_weight, LT-SFT's
// phase1_steps), whether the method is used alone or as a component.
#pragma once
#include <nlohmann/json.hpp>

namespace peft {

template <class F>
void for_each_config_part(const nlohmann::json& c, const F& f) {
  f(c);
  if (c.contains("components") && c["components"].is_array())
    for (auto& part : c["components"]) for_each_config_part(part, f);
}

}  // namespace peft
