// `peft combine --model DIR --adapter a=DIR --adapter b=DIR --weights 0.7,0.3 --combination ties
//  --density 0.5 [--majority_sign_method total|frequency] [--svd_rank R] [--svd_clamp Q]
//  [--svd_full_matrices true|false] [--svd_driver D] [--dare_rescale] [--seed S] --out DIR`:
// peft's add_weighted_adapter on LoRA adapters loaded over one base (include/peft/combine.h);
// writes the combined adapter as a normal adapter folder (Python peft loads it).
#include <torch/torch.h>

#include <iostream>
#include <set>
#include <sstream>

#include "cli/command.h"
#include "peft/combine.h"
#include "peft/error.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"

namespace peft::cli {
namespace {

std::vector<double> parse_weights(const std::string& s) {
  std::vector<double> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t n = 0;
    double v = 0;
    try {
      v = std::stod(item, &n);
    } catch (...) {
      n = 0;
    }
    PEFT_CHECK(n > 0 && n == item.size(), "option --weights: '", item, "' is not a number (expected e.g. 0.7,0.3)");
    out.push_back(v);
  }
  PEFT_CHECK(!out.empty(), "option --weights: empty list");
  return out;
}

/// The last component of a base_model_name_or_path ("models/llama/" -> "llama"): adapters
/// written on one base from different working directories still agree.
std::string base_field(const nlohmann::json& cfg) {
  if (!cfg.contains("base_model_name_or_path") || !cfg["base_model_name_or_path"].is_string()) return "";
  return cfg["base_model_name_or_path"].get<std::string>();
}
std::string base_name(std::string p) {
  while (!p.empty() && p.back() == '/') p.pop_back();
  auto pos = p.rfind('/');
  return pos == std::string::npos ? p : p.substr(pos + 1);
}

int run_combine(Args& a) {
  const std::string out = a.get("out");
  auto specs = a.get_all("adapter");
  PEFT_CHECK(!specs.empty(), "peft combine: give the adapters as --adapter NAME=DIR (repeatable)");
  PEFT_CHECK(a.has("weights"), "peft combine: give --weights w1,w2,... (one per --adapter)");
  auto weights = parse_weights(a.get("weights"));
  PEFT_CHECK(weights.size() == specs.size(), "option --weights: ", weights.size(), " weights for ", specs.size(),
             " adapters (give one per --adapter)");

  CombineOptions o;
  o.combination_type = a.get("combination", "svd");
  const auto& types = combination_types();
  if (std::find(types.begin(), types.end(), o.combination_type) == types.end()) {
    std::string known;
    for (auto& t : types) known += (known.empty() ? "" : ", ") + t;
    fail("option --combination: unknown combination type '", o.combination_type, "' (known: ", known, ")");
  }
  if (a.has("density")) {
    o.density = a.get_double("density", 1.0);
    PEFT_CHECK(*o.density > 0 && *o.density <= 1, "option --density: must be in (0, 1], got ", a.get("density"));
  }
  o.majority_sign_method = a.get("majority_sign_method", "total");
  if (a.has("svd_rank")) o.svd_rank = a.get_int("svd_rank", 0);
  if (a.has("svd_clamp")) o.svd_clamp = a.get_double("svd_clamp", 1.0);
  o.svd_full_matrices = a.get_bool("svd_full_matrices", true);
  o.svd_driver = a.get("svd_driver", "");
  o.dare_rescale = a.get_bool("dare_rescale", false);
  if (a.has("seed")) {
    int64_t s = a.get_int("seed", 0);
    PEFT_CHECK(s >= 0, "option --seed: must be >= 0, got ", s);
    o.seed = static_cast<uint64_t>(s);
  }
  const std::string name = a.get("name", "combined");
  const bool allow_mismatch = a.get_bool("allow_base_mismatch", false);
  a.reject_unknown({"model", "adapter", "weights", "combination", "density", "majority_sign_method", "svd_rank",
                    "svd_clamp", "svd_full_matrices", "svd_driver", "dare_rescale", "seed", "name",
                    "allow_base_mismatch", "out"});

  // NAME=DIR (a bare DIR is named adapter<i>); every config read before the base loads.
  std::vector<std::string> names, dirs;
  std::set<std::string> seen;
  std::string first_base, first_field, first_dir;
  for (size_t i = 0; i < specs.size(); ++i) {
    auto eq = specs[i].find('=');
    std::string n = eq == std::string::npos ? "adapter" + std::to_string(i) : specs[i].substr(0, eq);
    std::string d = eq == std::string::npos ? specs[i] : specs[i].substr(eq + 1);
    PEFT_CHECK(!n.empty() && n.find('.') == std::string::npos && n != name, "option --adapter '", specs[i],
               "': the name must be non-empty, without dots and not the output name '", name, "'");
    PEFT_CHECK(seen.insert(n).second, "option --adapter: name '", n, "' given twice");
    auto cfg = read_adapter_config(d);
    std::string field = base_field(cfg), b = base_name(field);
    if (i == 0) {
      first_base = b;
      first_field = field;
      first_dir = d;
    } else if (!allow_mismatch && !b.empty() && !first_base.empty() && b != first_base) {
      fail("peft combine: adapters of different bases: ", join_path(first_dir, "adapter_config.json"),
           " has base_model_name_or_path '", first_field, "', ", join_path(d, "adapter_config.json"), " has '", field,
           "' (pass --allow_base_mismatch if they are the same model)");
    }
    names.push_back(n);
    dirs.push_back(d);
  }

  auto model = load_model(a.get("model"));
  model->eval();
  auto pm = std::make_shared<PeftModel>(model);
  for (size_t i = 0; i < names.size(); ++i) pm->load_adapter(dirs[i], names[i]);
  auto res = add_weighted_adapter(*pm, names, weights, name, o);
  pm->save_adapter(out, name);
  std::cout << "combined " << names.size() << " adapter(s) with " << res.combination_type << " -> LoRA r=" << res.r
            << " on " << res.modules.size() << " modules";
  if (!res.masks.empty()) std::cout << " (" << res.masks.size() << " DARE masks)";
  if (o.seed) std::cout << ", seed " << *o.seed;
  std::cout << " -> " << out << "\n";
  return 0;
}

PEFT_REGISTER_COMMAND("combine", "weighted combination of LoRA adapters (peft's add_weighted_adapter: svd, cat, ties, dare, ...)",
                      run_combine);

}  // namespace
}  // namespace peft::cli
