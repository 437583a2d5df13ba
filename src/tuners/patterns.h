// peft's rank_pattern / alpha_pattern lookup (LoRA, LoHa, LoKr): the first key k with
// re.match(".*\\.k$", path), or the whole path as a key; else the default.
#pragma once
#include <nlohmann/json.hpp>

#include <regex>
#include <string>

#include "peft/error.h"

namespace peft {

template <class T>
T pattern_value(const nlohmann::json& pat, const std::string& path, T dflt) {
  if (!pat.is_object()) return dflt;
  for (auto& kv : pat.items())
    if (std::regex_match(path, std::regex("(.*\\.)?" + kv.key() + "$"))) {
      PEFT_CHECK(kv.value().is_number(), "adapter config: rank_pattern / alpha_pattern value for '", kv.key(),
                 "' must be a number, got ", kv.value().dump());
      return kv.value().get<T>();
    }
  return dflt;
}

}  // namespace peft
