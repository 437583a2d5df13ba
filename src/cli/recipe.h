// Run recipes: a JSON or flat YAML file of `key: value` pairs, overridden by `--key value` on
// the command line, saved with the run so it can be repeated exactly.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "cli/command.h"

namespace peft::cli {

/// Reads a recipe (.json, or .yaml/.yml with one `key: value` per line, `#` comments, values
/// parsed as JSON scalars or [lists]); errors name the file and line.
nlohmann::json read_recipe(const std::string& path);
/// A command-line value as JSON: numbers, true/false, null, [..] and {..} parse as JSON; a
/// comma-separated value becomes a list for list-valued keys; anything else is a string.
nlohmann::json parse_cli_value(const std::string& key, const std::string& value);
/// --config FILE (if given) updated with every other --key value (except `skip`).
nlohmann::json recipe_from_args(const Args& a, const std::vector<std::string>& skip);

}  // namespace peft::cli
