// add_weighted_adapter: a new LoRA adapter from weighted combinations of loaded LoRA adapters,
// following Python peft 0.13.2 (LoraModel.add_weighted_adapter and its helpers) step by step so
// that the factors, and DARE's random masks, are peft's. Per module, with the "valid" adapters
// (those that target it) in the given order, A_i [r, in], B_i [out, r], s_i = alpha_i / r_i:
//   cat:          A = [w_1 s_1 A_1; w_2 s_2 A_2; ...], B = [B_1, B_2, ...]     (B A = sum w_i s_i B_i A_i)
//   factor types: A = merge({A_i}, c), B = merge({B_i}, c), c_i = sqrt(w_i s_i)  (cross terms in B A)
//   svd types:    D = merge({s_i B_i A_i}, v), v_i = w_i s_i; D = U S Vh; B = U_r S_r, A = Vh_r
// with merge() of tuners/merge_ops.h; the new adapter has lora_alpha = r (scaling 1).
#include "peft/combine.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <set>

#include "peft/error.h"
#include "peft/tuner.h"
#include "tuners/merge_ops.h"

namespace peft {
namespace {

const std::set<std::string> kFactorTypes = {"linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"};
const std::set<std::string> kSvdTypes = {"svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd"};

bool needs_density(const std::string& t) { return t != "linear" && t != "svd" && t != "cat"; }
/// The merge_ops kind of a factor or svd type ("ties_svd" -> "ties", "svd" -> "linear").
std::string merge_kind(const std::string& t) {
  if (t == "svd") return "linear";
  if (kSvdTypes.count(t)) return t.substr(0, t.size() - 4);
  return t;
}

/// Module path without the wrappers' internals ("x.base_layer.base_layer" -> "x").
std::string module_path(std::string p) {
  const std::string bl = ".base_layer";
  for (auto pos = p.find(bl); pos != std::string::npos; pos = p.find(bl)) p.erase(pos, bl.size());
  return p;
}

/// The LoRA layer holding `adapter`'s factors at each module.
std::map<std::string, TunerLayer*> lora_layers_of(const PeftModel& pm, const std::string& adapter) {
  std::map<std::string, TunerLayer*> out;
  for (auto& kv : pm.tuner_layers())
    if (kv.second->has_param(adapter, "lora_A.weight") && kv.second->has_param(adapter, "lora_B.weight"))
      out[module_path(kv.first)] = kv.second;
  return out;
}

double lora_scaling(const nlohmann::json& c) {
  const double r = c["r"].get<double>(), alpha = c["lora_alpha"].get<double>();
  return c.value("use_rslora", false) ? alpha / std::sqrt(r) : alpha / r;
}

bool nonempty(const nlohmann::json& c, const std::string& k) {
  return c.contains(k) && !c[k].is_null() && !(c[k].is_object() && c[k].empty()) && !(c[k].is_array() && c[k].empty());
}

/// Refusals for an input adapter whose effect is not (only) s B A, or whose extra state the
/// combined adapter could not carry.
void check_input_adapter(const PeftModel& pm, const std::string& a) {
  const auto& e = pm.adapter(a);  // errors for an unknown name
  const std::string who = "add_weighted_adapter: adapter '" + a + "'";
  PEFT_CHECK(e.tuner->peft_type() == "LORA", who, " is a ", e.tuner->peft_type(),
             " adapter; only LoRA adapters can be combined (as peft's LoraModel.add_weighted_adapter)");
  const auto& c = e.config;
  PEFT_CHECK(!c.value("use_dora", false), who, ": DoRA (use_dora) adapters cannot be combined (the magnitude vector has no combined form)");
  PEFT_CHECK(!c.value("lora_gate", false), who, ": gated LoRA (lora_gate) cannot be combined (the gate depends on the input)");
  PEFT_CHECK(!nonempty(c, "rank_pattern") && !nonempty(c, "alpha_pattern"), who,
             ": rank_pattern / alpha_pattern are not supported (per-module ranks and scalings)");
  PEFT_CHECK(!nonempty(c, "modules_to_save"), who,
             ": modules_to_save is not supported (peft would give the new adapter fresh copies of the base modules)");
  PEFT_CHECK(c.value("bias", std::string("none")) == "none", who, ": field 'bias' = ", c["bias"].dump(),
             " is not supported (the trained biases are no part of B A)");
  const auto& init = c["init_lora_weights"];
  PEFT_CHECK(init.is_boolean() || init == "gaussian", who, ": init_lora_weights = ", init.dump(),
             " is not supported (peft would re-run that initialisation, changing the base weights)");
  PEFT_CHECK(!lora_layers_of(pm, a).empty(), who, " has no LoRA factors");
}

/// peft's inject_adapter for the new adapter draws, per target module, nn.Linear(in, r) and
/// nn.Linear(r, out) constructor inits (kaiming_uniform_: r*in and out*r numbers) and then the
/// re-initialisation of lora_A (r*in more for init_lora_weights = true; normal_ for "gaussian";
/// none for false). Replayed on the default generator; the values are discarded.
int64_t replay_init_draws(const std::vector<std::pair<int64_t, int64_t>>& in_out, int64_t r, const nlohmann::json& init) {
  torch::NoGradGuard ng;
  int64_t n = 0;
  for (auto& [in, out] : in_out) {
    torch::empty({r, in}).uniform_();
    torch::empty({out, r}).uniform_();
    n += r * in + out * r;
    if (init == true) {
      torch::empty({r, in}).uniform_();
      n += r * in;
    } else if (init == "gaussian") {
      torch::empty({r, in}).normal_(0.0, 1.0 / static_cast<double>(r));
      n += r * in;
    }
  }
  return n;
}

/// `slots` sorted as torch's named_modules() lists them (registration order: q, k, v, o, ...;
/// peft walks modules in that order, and DARE's draws follow it). find_slots() lists the slots
/// of one module by name.
std::vector<SlotRef> in_named_modules_order(PretrainedModel& model, std::vector<SlotRef> slots) {
  std::map<std::string, size_t> pos;
  for (auto& item : model.named_modules("", /*include_self=*/false)) pos.emplace(item.key(), pos.size());
  for (auto& s : slots) PEFT_CHECK(pos.count(s.path), "add_weighted_adapter: module ", s.path, " not found in named_modules()");
  std::stable_sort(slots.begin(), slots.end(),
                   [&](const SlotRef& a, const SlotRef& b) { return pos.at(a.path) < pos.at(b.path); });
  return slots;
}

struct ValidAdapter {
  std::string name;
  double weight, scaling;
  torch::Tensor A, B;
};

}  // namespace

const std::vector<std::string>& combination_types() {
  static const std::vector<std::string> t = {"svd", "linear", "cat", "ties", "ties_svd", "dare_linear", "dare_ties",
                                             "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"};
  return t;
}

CombineResult add_weighted_adapter(PeftModel& pm, const std::vector<std::string>& adapters,
                                   const std::vector<double>& weights, const std::string& name,
                                   const CombineOptions& opts) {
  const std::string where = "add_weighted_adapter: ";
  // ---- checks (nothing changes before they all pass) ----
  PEFT_CHECK(!adapters.empty(), where, "no adapters given");
  PEFT_CHECK(weights.size() == adapters.size(), where, adapters.size(), " adapters but ", weights.size(), " weights");
  const auto& types = combination_types();
  PEFT_CHECK(std::find(types.begin(), types.end(), opts.combination_type) != types.end(), where,
             "unknown combination_type '", opts.combination_type,
             "' (known: svd, linear, cat, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd, "
             "magnitude_prune, magnitude_prune_svd)");
  PEFT_CHECK(!pm.adapters().count(name), where, "adapter '", name, "' already exists");
  for (auto& a : adapters) check_input_adapter(pm, a);
  for (double w : weights) PEFT_CHECK(std::isfinite(w), where, "weights must be finite, got ", w);

  // peft: a single adapter is always combined linearly.
  const std::string type = adapters.size() == 1 ? "linear" : opts.combination_type;
  const bool svd = kSvdTypes.count(type) > 0, factor = kFactorTypes.count(type) > 0;
  std::vector<int64_t> ranks;
  for (auto& a : adapters) ranks.push_back(pm.adapter(a).config["r"].get<int64_t>());
  int64_t r_new = 0;
  if (factor) {
    PEFT_CHECK(std::set<int64_t>(ranks.begin(), ranks.end()).size() == 1, where,
               "All adapters must have the same r value when using combination_type linear, ties, dare_ties or "
               "dare_linear (also magnitude_prune; ranks given: ", nlohmann::json(ranks).dump(), ")");
    r_new = ranks[0];
  } else if (type == "cat") {
    for (auto r : ranks) r_new += r;
  } else {
    PEFT_CHECK(!opts.svd_rank || *opts.svd_rank > 0, where, "svd_rank must be a positive integer, got ", *opts.svd_rank);
    r_new = opts.svd_rank && *opts.svd_rank > 0 ? *opts.svd_rank : *std::max_element(ranks.begin(), ranks.end());
  }
  double density = 1.0;
  if (needs_density(type)) {
    PEFT_CHECK(opts.density.has_value(), where, "combination_type '", type, "' needs a density");
    density = *opts.density;
    PEFT_CHECK(density > 0 && density <= 1, where, "density must be in (0, 1], got ", density);
  }
  PEFT_CHECK(opts.majority_sign_method == "total" || opts.majority_sign_method == "frequency", where,
             "majority_sign_method must be \"total\" or \"frequency\", got '", opts.majority_sign_method, "'");
  if (opts.svd_clamp)
    PEFT_CHECK(*opts.svd_clamp >= 0 && *opts.svd_clamp <= 1, where, "svd_clamp must be a quantile in [0, 1], got ",
               *opts.svd_clamp);
  if (factor)  // peft takes math.sqrt(weight * scaling)
    for (size_t i = 0; i < adapters.size(); ++i)
      PEFT_CHECK(weights[i] * lora_scaling(pm.adapter(adapters[i]).config) >= 0, where, "combination_type '", type,
                 "' combines the factors with sqrt(weight * scaling); adapter '", adapters[i], "' has weight ",
                 weights[i], " (negative weights need cat or an svd type)");

  // The new adapter's config: the first adapter's with r, lora_alpha and target_modules replaced
  // (peft's dataclasses.replace); target_modules the union of lists or the alternation of regexes.
  nlohmann::json cfg = pm.adapter(adapters[0]).config;
  bool any_str = false, any_list = false;
  std::set<std::string> union_names;
  std::string regex;
  for (auto& a : adapters) {
    const auto& tm = pm.adapter(a).config["target_modules"];
    if (tm.is_string()) {
      any_str = true;
      regex += (regex.empty() ? "(" : "|(") + tm.get<std::string>() + ")";
    } else if (tm.is_array()) {
      any_list = true;
      for (auto& t : tm) union_names.insert(t.get<std::string>());
    } else {
      fail(where, "adapter '", a, "': target_modules must be a list or a regex string, got ", tm.dump());
    }
  }
  PEFT_CHECK(!(any_str && any_list), where,
             "all adapter configs should follow the same target modules type. Combining adapters with "
             "`target_modules` type being a mix of list/set and string is not supported.");
  cfg["target_modules"] = any_str ? nlohmann::json(regex) : nlohmann::json(union_names);
  cfg["r"] = r_new;
  // lora_alpha = r gives scaling 1. Deliberate difference: with use_rslora (inherited from the
  // first adapter) peft's alpha = r gives sqrt(r); alpha = sqrt(r) keeps the scaling 1.
  cfg["lora_alpha"] = cfg.value("use_rslora", false) ? nlohmann::json(std::sqrt(static_cast<double>(r_new)))
                                                      : nlohmann::json(r_new);
  for (const char* k : {"lora_fa", "dylora", "delta_lora_lambda", "delta_lora_start", "peft_cpp_residual", "lora_gate"})
    cfg.erase(k);
  cfg["inference_mode"] = true;

  auto tuner = find_tuner("LORA");
  auto slots = in_named_modules_order(*pm.model, pm.select_slots(*tuner, cfg));
  PEFT_CHECK(!slots.empty(), where, "the combined target_modules ", cfg["target_modules"].dump(), " match no module");
  std::vector<std::map<std::string, TunerLayer*>> layers_of;
  for (auto& a : adapters) layers_of.push_back(lora_layers_of(pm, a));
  std::vector<std::pair<int64_t, int64_t>> in_out;
  for (auto& s : slots) {
    bool any = false;
    for (auto& m : layers_of) any = any || m.count(s.path);
    PEFT_CHECK(any, where, "module ", s.path, " matches the combined target_modules but none of the adapters targets it");
    TunerLayer* some = nullptr;
    for (auto& m : layers_of)
      if (m.count(s.path)) some = m.at(s.path);
    const Linear& lin = some->base_linear();
    in_out.emplace_back(lin.in_features, lin.out_features);
    if (svd)
      PEFT_CHECK(r_new <= std::min(lin.in_features, lin.out_features), where, "svd_rank ", r_new,
                 " exceeds min(out, in) = ", std::min(lin.in_features, lin.out_features), " of module ", s.path);
  }
  if (!opts.svd_driver.empty())
    PEFT_CHECK(pm.model->parameters().empty() || pm.model->parameters()[0].is_cuda(), where,
               "svd_driver '", opts.svd_driver, "' is only supported for CUDA tensors (torch.linalg.svd driver=)");

  // ---- the new adapter ----
  CombineResult res;
  res.combination_type = type;
  res.r = r_new;
  if (opts.seed) torch::manual_seed(*opts.seed);
  auto gen = at::detail::getDefaultCPUGenerator();
  torch::Tensor gen_state;
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen_state = gen.get_state();
  }
  std::vector<std::pair<torch::Tensor, bool>> grad_flags;  // every parameter's flag, restored below
  for (auto& p : pm.parameters()) grad_flags.emplace_back(p, p.requires_grad());
  const auto active = pm.active_adapters();
  pm.add_adapter(name, cfg);  // our LoRA init draws: undone with the generator state
  pm.set_adapter(active);
  for (auto& [p, flag] : grad_flags) p.set_requires_grad(flag);
  for (auto& kv : pm.tuner_layers())
    for (auto& t : kv.second->trainable_tensors(name)) t.set_requires_grad(false);
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(gen_state);
  }
  for (auto& s : slots) res.modules.push_back(s.path);
  res.init_draws = replay_init_draws(in_out, r_new, cfg["init_lora_weights"]);
  auto new_layers = lora_layers_of(pm, name);

  torch::NoGradGuard ng;
  merge_ops::Spec spec{merge_kind(type), density, opts.majority_sign_method, opts.dare_rescale};
  for (size_t m = 0; m < res.modules.size(); ++m) {
    const std::string& path = res.modules[m];
    std::vector<ValidAdapter> valid;
    for (size_t i = 0; i < adapters.size(); ++i) {
      auto it = layers_of[i].find(path);
      if (it == layers_of[i].end()) continue;
      valid.push_back({adapters[i], weights[i], lora_scaling(pm.adapter(adapters[i]).config),
                       it->second->param(adapters[i], "lora_A.weight").detach(),
                       it->second->param(adapters[i], "lora_B.weight").detach()});
    }
    TunerLayer* target = new_layers.at(path);
    auto& A_new = target->param(name, "lora_A.weight");
    auto& B_new = target->param(name, "lora_B.weight");
    const auto dtype = A_new.scalar_type();
    auto record = [&](const std::string& tensor, const torch::Tensor& mask, size_t i) {
      res.masks.push_back({path, tensor, valid[i].name, mask.sizes().vec(), mask.count_nonzero().item<int64_t>()});
    };
    if (type == "cat") {
      std::vector<torch::Tensor> As, Bs;
      for (auto& v : valid) {
        As.push_back(v.A * v.weight * v.scaling);  // two roundings, as peft's `A * weight * scaling`
        Bs.push_back(v.B);
      }
      auto A = torch::cat(As, 0), B = torch::cat(Bs, 1);
      A_new.zero_();
      B_new.zero_();
      A_new.slice(0, 0, A.size(0)).copy_(A);
      B_new.slice(1, 0, B.size(1)).copy_(B);
    } else if (factor) {
      std::vector<float> c;
      std::vector<torch::Tensor> As, Bs;
      for (auto& v : valid) {
        c.push_back(static_cast<float>(std::sqrt(v.weight * v.scaling)));
        As.push_back(v.A);
        Bs.push_back(v.B);
      }
      auto cw = torch::tensor(c, torch::kFloat32).to(A_new.device());
      auto A = merge_ops::merge(As, cw, spec, [&](size_t i, const torch::Tensor& k) { record("lora_A", k, i); });
      auto B = merge_ops::merge(Bs, cw, spec, [&](size_t i, const torch::Tensor& k) { record("lora_B", k, i); });
      A_new.copy_(A.to(dtype));
      B_new.copy_(B.to(dtype));
    } else {
      const bool conv1d = target->base_linear().conv1d;  // peft's delta is [in, out] there
      std::vector<float> v;
      std::vector<torch::Tensor> D;
      for (auto& x : valid) {
        v.push_back(static_cast<float>(x.weight * x.scaling));
        auto BA = x.B.matmul(x.A);
        D.push_back((conv1d ? BA.t() : BA) * x.scaling);  // peft's get_delta_weight
      }
      auto vw = torch::tensor(v, torch::kFloat32).to(A_new.device());
      auto delta = merge_ops::merge(D, vw, spec, [&](size_t i, const torch::Tensor& k) { record("delta", k, i); });
      if (conv1d) delta = delta.t();
      c10::optional<c10::string_view> driver;
      if (!opts.svd_driver.empty()) driver = opts.svd_driver;
      auto [U, S, Vh] = torch::linalg_svd(delta, opts.svd_full_matrices, driver);
      auto Ur = U.slice(1, 0, r_new).matmul(torch::diag(S.slice(0, 0, r_new)));
      auto Vr = Vh.slice(0, 0, r_new);
      if (opts.svd_clamp) {
        auto hi = torch::quantile(torch::cat({Ur.flatten(), Vr.flatten()}), *opts.svd_clamp);
        auto lo = -hi;
        Ur = Ur.clamp(lo, hi);
        Vr = Vr.clamp(lo, hi);
      }
      A_new.copy_(Vr.to(dtype));
      B_new.copy_(Ur.to(dtype));
    }
  }
  return res;
}

}  // namespace peft
