// `peft methods [--model DIR] [--methods a,b] [--json] [--fields] [--config RECIPE] [--KEY VALUE ...]`:
// every registered method with its family, paper, and two facts measured on the model (default:
// the bundled assets/stories260K): whether it merges into the base weights (merge() is tried)
// and its trainable parameters for the config (preset + recipe/overrides; an override applies
// to the methods whose config has that field, e.g. --r 8 reaches the LoRA family only).
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "cli/command.h"
#include "cli/recipe.h"
#include "peft/error.h"
#include "peft/tuner.h"

namespace peft::cli {
namespace {

struct Row {
  std::string name, family, paper, peft_type, merges, error;
  int64_t trainable = -1, total = 0;
};

Row measure(const std::string& model_dir, const std::string& method, const nlohmann::json& overrides) {
  Row r;
  r.name = method;
  if (auto* c = method_card(method)) {
    r.family = c->family;
    r.paper = c->paper;
  }
  auto base = method_config(method);
  r.peft_type = base["peft_type"].get<std::string>();
  if (model_dir.empty()) return r;
  try {
    const auto keys = find_tuner(r.peft_type)->config_keys();
    nlohmann::json cfg = nlohmann::json::object();
    for (auto& kv : overrides.items())
      if (std::find(keys.begin(), keys.end(), kv.key()) != keys.end()) cfg[kv.key()] = kv.value();
    auto pm = std::make_shared<PeftModel>(load_model(model_dir));
    pm->add_adapter("default", method_config(method, cfg));
    auto rep = pm->trainable_report();
    r.trainable = rep.trainable;
    r.total = rep.total;
    try {
      torch::NoGradGuard ng;
      pm->merge();
      r.merges = "yes";
    } catch (const std::exception&) {
      r.merges = "no";
    }
  } catch (const std::exception& e) {
    r.error = e.what();
  }
  return r;
}

/// `--fields`: the method's config table (name, type, default as this method sets it, help).
void print_fields(const std::string& method, const nlohmann::json& base, const std::vector<ConfigField>& table) {
  if (table.empty()) {
    std::cout << "    (" << method << ": no field table yet; its fields are the keys of its adapter_config.json)\n";
    return;
  }
  for (auto& f : table) {
    auto def = base.contains(f.name) ? base[f.name] : f.default_value;
    std::string type = field_type_name(f.type);
    if (f.choices.is_array()) type = "one of " + f.choices.dump();
    std::cout << "    --" << std::left << std::setw(26) << f.name << std::setw(10) << def.dump() << " " << type
              << (f.nullable ? " | null" : "") << (f.ours ? " [peft.cpp]" : "") << ": " << f.help << "\n";
  }
}

int run_methods(Args& a) {
  std::string model_dir = a.get("model", std::filesystem::is_directory("assets/stories260K") ? "assets/stories260K" : "");
  auto overrides = recipe_from_args(a, {"model", "methods", "json", "fields"});
  const bool show_fields = a.get_bool("fields", false);
  std::vector<std::string> names;
  if (a.has("methods")) {
    std::stringstream ss(a.get("methods"));
    for (std::string n; std::getline(ss, n, ',');)
      if (!n.empty()) names.push_back(n);
  } else {
    names = method_names();
  }
  for (auto& kv : overrides.items()) {  // a key no listed method has is a typo, not a no-op
    bool known = false;
    for (auto& n : names) {
      const auto keys = find_tuner(method_config(n)["peft_type"].get<std::string>())->config_keys();
      known = known || std::find(keys.begin(), keys.end(), kv.key()) != keys.end();
    }
    PEFT_CHECK(known, "peft methods: option --", kv.key(), " is not a config field of any listed method");
  }
  std::vector<Row> rows;
  for (auto& n : names) rows.push_back(measure(model_dir, n, overrides));
  if (a.get_bool("json", false)) {
    nlohmann::json out = {{"model", model_dir}, {"overrides", overrides}, {"methods", nlohmann::json::array()}};
    for (auto& r : rows) {
      nlohmann::json j = {{"name", r.name}, {"family", r.family}, {"paper", r.paper}, {"peft_type", r.peft_type}};
      auto table = find_tuner(r.peft_type)->fields();
      if (!table.empty()) j["fields"] = describe_fields(table);
      if (!r.error.empty()) j["error"] = r.error;
      else if (r.trainable >= 0) {
        j["trainable"] = r.trainable;
        j["total"] = r.total;
        j["merges"] = r.merges == "yes";
      }
      out["methods"].push_back(j);
    }
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::cout << "model: " << (model_dir.empty() ? "(none: pass --model DIR for trainable counts and merge support)" : model_dir)
            << "\n";
  std::cout << std::left << std::setw(18) << "method" << std::setw(17) << "family" << std::setw(15) << "peft_type"
            << std::setw(7) << "merges" << std::right << std::setw(12) << "trainable" << std::setw(9) << "%"
            << "  paper\n";
  for (auto& r : rows) {
    std::ostringstream pct;
    if (r.trainable >= 0 && r.total > 0) pct << std::fixed << std::setprecision(3) << 100.0 * r.trainable / r.total;
    std::cout << std::left << std::setw(18) << r.name << std::setw(17) << r.family << std::setw(15) << r.peft_type
              << std::setw(7) << (r.error.empty() ? r.merges : "-") << std::right << std::setw(12)
              << (r.trainable >= 0 ? std::to_string(r.trainable) : "-") << std::setw(9) << pct.str() << "  " << r.paper
              << "\n";
    if (!r.error.empty()) std::cout << "    " << r.name << " on this model: " << r.error << "\n";
    if (show_fields) print_fields(r.name, method_config(r.name), find_tuner(r.peft_type)->fields());
  }
  return 0;
}

PEFT_REGISTER_COMMAND("methods", "list every PEFT method: family, paper, merges?, trainable parameters on a model",
                      run_methods);

}  // namespace
}  // namespace peft::cli
