// JSON parsing with a nesting limit. nlohmann's parser is iterative, but copying, dumping and
// comparing a parsed value recurse once per level, so a hostile file nested a million levels
// deep would overflow the stack later, far from the read. Real configs nest < 10 levels.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace peft {

constexpr int kMaxJsonDepth = 128;  // serde_json's default recursion limit, as safetensors uses

/// Parses [begin, end); syntax errors and nesting deeper than kMaxJsonDepth throw peft::Error
/// starting with `what` (a file name).
nlohmann::json parse_json_limited(const char* begin, const char* end, const std::string& what);

}  // namespace peft
