// `peft combine --model DIR --adapter a=DIR --adapter b=DIR --weights 0.7,0.3 --combination ties
//  --density 0.5 [--majority_sign_method total|frequency] [--svd_rank R] [--svd_clamp Q]
//  [--svd_full_matrices true|false] [--svd_driver D] [--dare_rescale] [--seed S] --out DIR`:
// peft's add_weighted_adapter on LoRA adapters loaded over one base (include/peft/combine.h);
// writes the combined adapter as a normal adapter folder (Python peft loads it).
// `peft combine --search lorahub --examples FILE [--budget 40] [--l1 0.05] [--bound 1.5] [--seed S]
//  --model DIR --adapter a=DIR ... --out DIR`: LoRAHub's weight search on a few examples
// (include/peft/lorahub.h); writes the composed adapter and OUT/lorahub.json (weights, loss).
#include <torch/torch.h>

#include <algorithm>
#include <iostream>
#include <set>
#include <sstream>

#include "cli/command.h"
#include "cli/model_args.h"
#include "peft/combine.h"
#include "peft/data.h"
#include "peft/lorahub.h"
#include "peft/tokenizer.h"
#include "peft/trainer.h"
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

/// LoRAHub: the composition's loss on the examples (evaluate_dataset's eval_loss), searched.
// --adapter NAME=DIR (a bare DIR is named adapter<i>): names and folders, in order.
std::pair<std::vector<std::string>, std::vector<std::string>> adapter_specs(const std::vector<std::string>& specs,
                                                                             const std::string& out_name) {
  std::vector<std::string> names, dirs;
  std::set<std::string> seen;
  for (size_t i = 0; i < specs.size(); ++i) {
    auto [n, d] = split_adapter_name(specs[i]);
    if (n.empty()) n = "adapter" + std::to_string(i);
    PEFT_CHECK(n != out_name, "option --adapter '", specs[i], "': the name must not be the output name '", out_name, "'");
    PEFT_CHECK(seen.insert(n).second, "option --adapter: name '", n, "' given twice");
    names.push_back(n);
    dirs.push_back(d);
  }
  return {names, dirs};
}

int run_lorahub(Args& a, PeftModel& pm, const std::vector<std::string>& names, const std::string& name,
                const std::string& out) {
  PEFT_CHECK(a.has("examples"), "peft combine --search lorahub: give the few examples of the new task as --examples FILE");
  LoraHubOptions o;
  o.budget = a.get_int("budget", o.budget);
  o.l1 = a.get_double("l1", o.l1);
  o.bound = a.get_double("bound", o.bound);
  const int64_t seed = a.get_int("seed", 0);
  PEFT_CHECK(seed >= 0, "option --seed: must be >= 0, got ", seed);
  o.seed = static_cast<uint64_t>(seed);
  PEFT_CHECK(o.budget >= 1, "option --budget: must be >= 1, got ", o.budget);
  PEFT_CHECK(o.l1 >= 0, "option --l1: must be >= 0, got ", o.l1);
  PEFT_CHECK(o.bound > 0, "option --bound: must be > 0, got ", o.bound);
  auto tok = load_tokenizer(a.get("tokenizer", a.get("model")));
  DataConfig dc;
  dc.train_file = a.get("examples");
  dc.tokenize.max_length = a.get_int("max_length", 256);
  auto data = load_data(dc, *tok);
  const int64_t bs = a.get_int("batch_size", 8);
  auto forward = [&pm](const ModelInput& in) { return pm.forward(in); };
  auto loss = [&] { return evaluate_dataset(forward, data.train, bs)["eval_loss"].get<double>(); };
  std::cerr << "LoRAHub: " << names.size() << " adapters, " << data.train.size() << " examples, budget " << o.budget
            << " evaluations\n";
  auto res = lorahub_search(pm, names, name, loss, o);
  pm.save_adapter(out, name);
  nlohmann::json w = nlohmann::json::object();
  for (size_t i = 0; i < names.size(); ++i) w[names[i]] = res.weights[i];
  nlohmann::json report = {{"weights", w},           {"loss", res.loss},         {"objective", res.objective},
                           {"l1", o.l1},             {"bound", o.bound},         {"budget", o.budget},
                           {"seed", o.seed},         {"evaluations", res.evaluations},
                           {"best_objective", res.best_objective}, {"examples", dc.train_file}};
  write_json(join_path(out, "lorahub.json"), report);
  std::cout << "LoRAHub weights " << w.dump() << ", loss " << res.loss << " (objective " << res.objective << ", "
            << res.evaluations << " evaluations) -> " << out << "\n";
  return 0;
}

int run_combine(Args& a) {
  const std::string out = a.get("out");
  auto specs = a.get_all("adapter");
  PEFT_CHECK(!specs.empty(), "peft combine: give the adapters as --adapter NAME=DIR (repeatable)");
  const std::string search = a.get("search", "");
  PEFT_CHECK(search.empty() || search == "lorahub", "option --search: unknown search '", search, "' (known: lorahub)");
  if (!search.empty()) {
    PEFT_CHECK(!a.has("weights") && !a.has("combination"), "peft combine --search lorahub finds the weights itself: ",
               "drop --weights / --combination");
    a.reject_unknown({"model", "adapter", "search", "examples", "budget", "l1", "bound", "seed", "name", "tokenizer",
                      "max_length", "batch_size", "out"});
  }
  PEFT_CHECK(!search.empty() || a.has("weights"), "peft combine: give --weights w1,w2,... (one per --adapter)");
  if (!search.empty()) {
    const std::string name = a.get("name", "lorahub");
    auto model = load_model(a.get("model"));
    model->eval();
    auto pm = std::make_shared<PeftModel>(model);
    auto [names, dirs] = adapter_specs(specs, name);
    for (size_t i = 0; i < names.size(); ++i) pm->load_adapter(dirs[i], names[i]);
    pm->eval();
    return run_lorahub(a, *pm, names, name, out);
  }
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
  auto [names, dirs] = adapter_specs(specs, name);
  std::string first_base, first_field, first_dir;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& d = dirs[i];
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
