#include "cli/recipe.h"

#include <set>
#include <sstream>

#include "peft/error.h"
#include "peft/io.h"

namespace peft::cli {

static std::string trim(const std::string& s) {
  auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  auto e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

static nlohmann::json scalar(const std::string& v) {
  if (v.empty()) return nullptr;
  try {
    return nlohmann::json::parse(v);
  } catch (...) {
  }
  if ((v.front() == '\'' && v.back() == '\'') && v.size() >= 2) return v.substr(1, v.size() - 2);
  return v;
}

nlohmann::json read_recipe(const std::string& path) {
  std::string text = read_file(path);
  bool yaml = path.size() > 5 && (path.substr(path.size() - 5) == ".yaml" || path.substr(path.size() - 4) == ".yml");
  if (!yaml) {
    auto j = read_json(path);
    PEFT_CHECK(j.is_object(), path, ": a recipe must be a JSON object of options");
    return j;
  }
  nlohmann::json j = nlohmann::json::object();
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    auto hash = line.find(" #");
    if (!line.empty() && line[0] == '#') continue;
    if (hash != std::string::npos) line = line.substr(0, hash);
    line = trim(line);
    if (line.empty() || line == "---") continue;
    auto colon = line.find(':');
    PEFT_CHECK(colon != std::string::npos && colon > 0, path, ":", n,
               ": expected `key: value` (this reader takes flat recipes only)");
    j[trim(line.substr(0, colon))] = scalar(trim(line.substr(colon + 1)));
  }
  return j;
}

nlohmann::json parse_cli_value(const std::string& key, const std::string& value) {
  static const std::set<std::string> lists = {"target_modules", "modules_to_save", "layers_to_transform",
                                              "feedforward_modules", "exclude_modules", "labels", "metrics"};
  if (lists.count(key) && !value.empty() && value.front() != '[' && value.find(',') != std::string::npos) {
    nlohmann::json arr = nlohmann::json::array();
    std::stringstream ss(value);
    std::string item;
    while (std::getline(ss, item, ',')) arr.push_back(scalar(trim(item)));
    return arr;
  }
  // One name is a list of one; target_modules with regex characters stays a regex string, and
  // so does peft's shorthand "all-linear" (a string in a recipe too).
  bool regex = key == "target_modules" &&
               (value.find_first_of("*[]()|\\^$+?") != std::string::npos || value == "all-linear");
  if (lists.count(key) && !regex && !value.empty() && value.front() != '[') return nlohmann::json::array({scalar(value)});
  return scalar(value);
}

nlohmann::json recipe_from_args(const Args& a, const std::vector<std::string>& skip) {
  nlohmann::json r = a.has("config") ? read_recipe(a.get("config")) : nlohmann::json::object();
  for (auto& [k, v] : a.options()) {
    if (k == "config" || std::find(skip.begin(), skip.end(), k) != skip.end()) continue;
    r[k] = parse_cli_value(k, v);
  }
  return r;
}

}  // namespace peft::cli
