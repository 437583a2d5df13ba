// LoRAHub's composition and weight search (see include/peft/lorahub.h).
#include "peft/lorahub.h"

#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/tuner.h"
#include "tuners/cma_es.h"

namespace peft {
namespace {

double scaling_of(const nlohmann::json& c) {
  const double r = c["r"].get<double>(), alpha = c["lora_alpha"].get<double>();
  return c.value("use_rslora", false) ? alpha / std::sqrt(r) : alpha / r;
}

/// Module path -> layer holding `a`'s LoRA factors.
std::map<std::string, TunerLayer*> factor_layers(const PeftModel& pm, const std::string& a) {
  std::map<std::string, TunerLayer*> out;
  for (auto& [path, t] : pm.tuner_layers())
    if (t->has_param(a, "lora_A.weight") && t->has_param(a, "lora_B.weight")) out[path] = t;
  return out;
}

void check_same_structure(const PeftModel& pm, const std::vector<std::string>& adapters) {
  PEFT_CHECK(!adapters.empty(), "LoRAHub: no adapters to compose");
  const auto& c0 = pm.adapter(adapters[0]).config;
  const auto layers0 = factor_layers(pm, adapters[0]);
  for (auto& a : adapters) {
    const auto& e = pm.adapter(a);
    const std::string who = "LoRAHub: adapter '" + a + "'";
    PEFT_CHECK(e.tuner->peft_type() == "LORA", who, " is a ", e.tuner->peft_type(), " adapter; LoRAHub composes LoRA");
    const auto& c = e.config;
    PEFT_CHECK(!c.value("use_dora", false) && !c.value("lora_gate", false), who,
               ": DoRA / gated LoRA have no weighted-sum form");
    PEFT_CHECK(c["r"] == c0["r"], who, " has r = ", c["r"].dump(), ", '", adapters[0], "' has ", c0["r"].dump(),
               " (LoRAHub sums the factors: every module needs the same rank)");
    PEFT_CHECK(std::abs(scaling_of(c) - scaling_of(c0)) < 1e-12, who, " has scaling ", scaling_of(c), ", '",
               adapters[0], "' has ", scaling_of(c0), " (lora_alpha / r must agree)");
    PEFT_CHECK(c.value("bias", std::string("none")) == "none", who, ": trained biases have no composed form");
    auto layers = factor_layers(pm, a);
    PEFT_CHECK(!layers.empty(), who, " has no LoRA factors");
    bool same = layers.size() == layers0.size();
    for (auto& kv : layers) same = same && layers0.count(kv.first);
    PEFT_CHECK(same, who, " targets other modules than '", adapters[0], "' (", layers.size(), " vs ", layers0.size(),
               "); LoRAHub needs the same target modules");
  }
}

}  // namespace

void lorahub_compose(PeftModel& pm, const std::vector<std::string>& adapters, const std::vector<double>& weights,
                     const std::string& name) {
  PEFT_CHECK(weights.size() == adapters.size(), "LoRAHub: ", weights.size(), " weights for ", adapters.size(),
             " adapters");
  torch::NoGradGuard ng;
  for (auto& [path, t] : factor_layers(pm, name))
    for (const char* key : {"lora_A.weight", "lora_B.weight"}) {
      auto sum = torch::zeros_like(t->param(name, key));
      for (size_t i = 0; i < adapters.size(); ++i) sum.add_(t->param(adapters[i], key), weights[i]);
      t->param(name, key).copy_(sum);
    }
}

LoraHubResult lorahub_search(PeftModel& pm, const std::vector<std::string>& adapters, const std::string& name,
                             const std::function<double()>& loss, const LoraHubOptions& o) {
  check_same_structure(pm, adapters);
  PEFT_CHECK(o.budget >= 1 && o.l1 >= 0 && o.bound > 0, "LoRAHub: budget >= 1, l1 >= 0 and bound > 0");
  PEFT_CHECK(!pm.adapters().count(name), "LoRAHub: an adapter named '", name, "' exists already");
  nlohmann::json cfg = pm.adapter(adapters[0]).config;
  cfg["init_lora_weights"] = true;
  const auto active = pm.active_adapters();
  pm.add_adapter(name, cfg);
  pm.set_adapter(name);
  const int64_t n = static_cast<int64_t>(adapters.size());
  auto objective = [&](const std::vector<double>& w) {
    lorahub_compose(pm, adapters, w, name);
    double l1 = 0;
    for (double v : w) l1 += std::abs(v);
    return loss() + o.l1 * l1;
  };
  CmaOptions co;
  co.sigma0 = o.sigma0;
  co.lower = -o.bound;
  co.upper = o.bound;
  co.budget = o.budget;
  co.seed = o.seed;
  LoraHubResult res;
  try {
    auto cr = cma_es_minimize(objective, std::vector<double>(n, 0.0), co);
    res.weights = cr.best_x;
    res.objective = cr.best_f;
    res.evaluations = cr.evaluations;
    res.best_objective = cr.best_so_far;
    lorahub_compose(pm, adapters, res.weights, name);
    double l1 = 0;
    for (double v : res.weights) l1 += std::abs(v);
    res.loss = res.objective - o.l1 * l1;
  } catch (...) {
    pm.delete_adapter(name);
    pm.set_adapter(active);
    throw;
  }
  pm.set_adapter(active);  // the new adapter is left inactive
  return res;
}

}  // namespace peft
