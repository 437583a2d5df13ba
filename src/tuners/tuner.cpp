// Tuner registry, method presets, peft's targeting rules and the TunerLayer base.
#include "peft/tuner.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <regex>

#include "peft/error.h"
#include "peft/precision.h"
#include "tuners/default_targets.h"

namespace peft {

namespace {
/// Holder of one kind of adapter tensor ("lora_A", "ia3_l"), so that delete_adapter can drop a
/// parameter registered directly on it (torch::nn::Module has no unregister_parameter).
struct ParamBag : torch::nn::Module {
  void drop(const std::string& name) {
    if (parameters_.contains(name)) parameters_.erase(name);
  }
};

std::map<std::string, TunerPtr>& tuner_registry() {
  static std::map<std::string, TunerPtr> r;
  return r;
}
std::map<std::string, nlohmann::json>& method_registry() {
  static std::map<std::string, nlohmann::json> r;
  return r;
}
std::string upper(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return s;
}
std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}
}  // namespace

bool register_tuner(TunerPtr t) {
  auto key = upper(t->peft_type());
  TORCH_INTERNAL_ASSERT(!tuner_registry().count(key), "tuner registered twice: ", key);
  tuner_registry()[key] = std::move(t);
  return true;
}

TunerPtr find_tuner(const std::string& peft_type) {
  auto it = tuner_registry().find(upper(peft_type));
  if (it != tuner_registry().end()) return it->second;
  std::string known;
  for (auto& kv : tuner_registry()) known += " " + kv.first;
  fail("unknown peft_type '", peft_type, "' (known:", known, ")");
}

std::vector<std::string> registered_tuners() {
  std::vector<std::string> out;
  for (auto& kv : tuner_registry()) out.push_back(kv.first);
  return out;
}

bool register_method(const std::string& name, nlohmann::json base) {
  TORCH_INTERNAL_ASSERT(!method_registry().count(name), "method registered twice: ", name);
  TORCH_INTERNAL_ASSERT(base.contains("peft_type"), "method preset without peft_type: ", name);
  method_registry()[name] = std::move(base);
  return true;
}

std::vector<std::string> method_names() {
  std::vector<std::string> out;
  for (auto& kv : method_registry()) out.push_back(kv.first);
  return out;
}

nlohmann::json method_config(const std::string& method, const nlohmann::json& overrides) {
  std::string m = lower(method);
  std::replace(m.begin(), m.end(), '_', '-');
  auto it = method_registry().find(m);
  if (it == method_registry().end()) {
    // A peft_type works too ("LORA", "IA3").
    if (tuner_registry().count(upper(method))) {
      nlohmann::json c = {{"peft_type", upper(method)}};
      if (overrides.is_object()) c.update(overrides);
      return c;
    }
    std::string known;
    for (auto& kv : method_registry()) known += " " + kv.first;
    fail("unknown method '", method, "' (known:", known, ")");
  }
  nlohmann::json c = it->second;
  PEFT_CHECK(overrides.is_object() || overrides.is_null(), "method options must be a JSON object");
  if (overrides.is_object()) c.update(overrides);
  return c;
}

torch::Tensor kaiming_uniform(std::vector<int64_t> shape, int64_t fan_in) {
  // kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound = gain*sqrt(3/fan_in) = 1/sqrt(fan_in).
  double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  return torch::empty(shape).uniform_(-bound, bound);
}

// ---- targeting ------------------------------------------------------------------------------

static std::vector<std::string> string_list(const nlohmann::json& j, const char* field) {
  std::vector<std::string> out;
  PEFT_CHECK(j.is_array(), "adapter config: field '", field, "' must be a list of names or a regex string");
  for (auto& v : j) {
    PEFT_CHECK(v.is_string(), "adapter config: field '", field, "' must hold strings, got ", v.dump());
    out.push_back(v.get<std::string>());
  }
  return out;
}

// Role values are module-name suffixes or, starting with '^', full-match regexes (roles that
// must tell same-named modules apart, e.g. T5's decoder blocks from its encoder's). A list of
// names with no regex stays a suffix list; otherwise it becomes one alternation regex, each
// suffix s as "(.*\.)?s".
static nlohmann::json suffixes_or_regex(const std::vector<std::string>& names) {
  if (std::none_of(names.begin(), names.end(), [](const std::string& n) { return !n.empty() && n[0] == '^'; }))
    return names;
  std::string re;
  for (auto& n : names) {
    if (!re.empty()) re += "|";
    if (!n.empty() && n[0] == '^') {
      re += "(?:" + n + ")";
      continue;
    }
    re += "(?:(?:.*\\.)?";
    for (char ch : n) {
      if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_') re += '\\';
      re += ch;
    }
    re += ")";
  }
  return re;
}

TargetSelector TargetSelector::from_config(const nlohmann::json& cfg, const PretrainedModel& model,
                                           const std::vector<std::string>& default_roles) {
  TargetSelector s;
  auto roles = model.roles();
  auto resolve = [&](const std::string& name) {
    auto it = roles.find(name);
    return it == roles.end() ? name : it->second;
  };
  auto tm = cfg.value("target_modules", nlohmann::json());
  if (tm.is_null()) tm = peft_default_targets(cfg.value("peft_type", std::string()), model.model_type());
  if (tm.is_string() && tm.get<std::string>() == "all-linear") tm = all_linear_targets(model);
  if (tm.is_null()) {
    PEFT_CHECK(!default_roles.empty(), "adapter config: field 'target_modules' is required for peft_type ",
               cfg.value("peft_type", std::string("?")));
    std::vector<std::string> r;
    for (auto& name : default_roles) {
      auto it = roles.find(name);
      PEFT_CHECK(it != roles.end(), "adapter config: target_modules not given and model type '", model.model_type(),
                 "' has no module for the default role '", name, "'");
      r.push_back(it->second);
    }
    tm = suffixes_or_regex(r);
  } else if (tm.is_array()) {
    std::vector<std::string> r;
    for (auto& n : string_list(tm, "target_modules")) r.push_back(resolve(n));
    tm = suffixes_or_regex(r);
  } else {
    PEFT_CHECK(tm.is_string(), "adapter config: field 'target_modules' must be a list or a string");
  }
  s.target_modules = tm;
  auto ex = cfg.value("exclude_modules", nlohmann::json());
  if (ex.is_array()) {
    std::vector<std::string> r;
    for (auto& n : string_list(ex, "exclude_modules")) r.push_back(resolve(n));
    ex = suffixes_or_regex(r);
  }
  s.exclude_modules = ex;
  auto lt = cfg.value("layers_to_transform", nlohmann::json());
  if (lt.is_number_integer()) s.layers_to_transform.push_back(lt.get<int64_t>());
  else if (lt.is_array())
    for (auto& v : lt) {
      PEFT_CHECK(v.is_number_integer(), "adapter config: field 'layers_to_transform' must hold integers");
      s.layers_to_transform.push_back(v.get<int64_t>());
    }
  else PEFT_CHECK(lt.is_null(), "adapter config: field 'layers_to_transform' must be an int or a list of ints");
  auto lp = cfg.value("layers_pattern", nlohmann::json());
  if (lp.is_string()) s.layers_pattern.push_back(lp.get<std::string>());
  else if (lp.is_array()) s.layers_pattern = string_list(lp, "layers_pattern");
  if (s.layers_pattern.empty()) s.layers_pattern.push_back(model.layers_pattern());
  return s;
}

static bool name_matches(const nlohmann::json& spec, const std::string& path, const Module*) {
  return module_name_matches(spec, path);
}

// peft's _maybe_include_all_linear_layers: the last name components of every Linear (nn.Linear
// and Conv1D) of the model, minus the output layer's name (get_output_embeddings(), or the
// classification head of a SEQ_CLS model), as a sorted list. Wrappers are looked through: a
// wrapped Linear counts under its module path (".base_layer" dropped); modules_to_save copies
// do not count.
nlohmann::json all_linear_targets(const PretrainedModel& model) {
  std::set<std::string> names;
  for (auto& kv : model.named_modules("", /*include_self=*/false)) {
    if (!dynamic_cast<const Linear*>(kv.value().get())) continue;
    std::string path = kv.key();
    if (path.find("modules_to_save") != std::string::npos) continue;
    for (auto pos = path.find(".base_layer"); pos != std::string::npos; pos = path.find(".base_layer"))
      path.erase(pos, std::string(".base_layer").size());
    auto dot = path.rfind('.');
    names.insert(dot == std::string::npos ? path : path.substr(dot + 1));
  }
  auto roles = model.roles();
  if (roles.count(role::kHead)) names.erase(roles[role::kHead]);
  PEFT_CHECK(!names.empty(), "adapter config: target_modules 'all-linear': the model has no Linear layer");
  return nlohmann::json(std::vector<std::string>(names.begin(), names.end()));
}

nlohmann::json resolved_target_modules(const nlohmann::json& cfg, const PretrainedModel& model,
                                       const std::vector<std::string>& default_roles) {
  auto tm = cfg.value("target_modules", nlohmann::json());
  if (tm.is_null() && peft_default_targets(cfg.value("peft_type", std::string()), model.model_type()).is_null() &&
      default_roles.empty())
    return tm;  // the tuner places itself (or needs no list)
  return TargetSelector::from_config(cfg, model, default_roles).target_modules;
}

bool module_name_matches(const nlohmann::json& spec, const std::string& path) {
  if (spec.is_null()) return false;
  if (spec.is_string()) return std::regex_match(path, std::regex(spec.get<std::string>()));  // re.fullmatch
  for (auto& v : spec) {
    auto t = v.get<std::string>();
    if (path == t || (path.size() > t.size() && path.compare(path.size() - t.size(), t.size(), t) == 0 &&
                      path[path.size() - t.size() - 1] == '.'))
      return true;
  }
  return false;
}

bool TargetSelector::matches(const std::string& path, const Module* mod) const {
  if (!name_matches(target_modules, path, mod)) return false;
  if (name_matches(exclude_modules, path, mod)) return false;
  if (!layers_to_transform.empty()) {
    int64_t idx = -1;
    for (auto& p : layers_pattern) {
      std::smatch m;
      std::regex re(".*\\." + p + "\\.(\\d+)\\..*");
      std::string full = "." + path + ".";
      if (std::regex_match(full, m, re)) {
        idx = std::stoll(m[1].str());
        break;
      }
    }
    if (idx < 0) return false;
    if (std::find(layers_to_transform.begin(), layers_to_transform.end(), idx) == layers_to_transform.end()) return false;
  }
  return true;
}

// ---- TunerLayer -----------------------------------------------------------------------------

TunerLayer::TunerLayer(LayerPtr base) { register_slot("base_layer", base_layer, std::move(base)); }

Layer* innermost(Layer* l) {
  while (auto* t = dynamic_cast<TunerLayer*>(l)) l = t->base_layer.get();
  return l;
}
Linear* innermost_linear(Layer* l) { return dynamic_cast<Linear*>(innermost(l)); }

Linear& TunerLayer::base_linear() const {
  Layer* l = innermost(base_layer.get());
  auto* lin = dynamic_cast<Linear*>(l);
  PEFT_CHECK(lin, "this method wraps Linear layers only; the targeted module is a ", l->name());
  return *lin;
}

torch::Tensor TunerLayer::add_param(const std::string& adapter, const std::string& key, torch::Tensor value,
                                    bool trainable) {
  // Adapter tensors are float32 on a half-precision base (peft's autocast_adapter_dtype).
  if (is_half_dtype(value.scalar_type())) value = value.to(torch::kFloat32);
  auto dot = key.find('.');
  std::string head = key.substr(0, dot);
  auto& cont = containers_[head];
  if (!cont) cont = register_module(head, std::make_shared<ParamBag>());
  torch::Tensor t;
  if (dot == std::string::npos) {
    t = cont->register_parameter(adapter, value, trainable);
  } else {
    auto& sub = containers_[head + "/" + adapter];
    if (!sub) sub = cont->register_module(adapter, std::make_shared<torch::nn::Module>());
    t = sub->register_parameter(key.substr(dot + 1), value, trainable);
  }
  params_[{adapter, key}] = {t, trainable, ""};
  adapters_.insert(adapter);
  return t;
}

torch::Tensor& TunerLayer::param(const std::string& adapter, const std::string& key) {
  auto it = params_.find({adapter, key});
  TORCH_INTERNAL_ASSERT(it != params_.end(), "no parameter ", key, " for adapter ", adapter);
  return it->second.tensor;
}

void TunerLayer::set_namespace(const std::string& adapter, const std::string& ns) {
  for (auto& kv : params_)
    if (kv.first.first == adapter && kv.second.ns.empty()) kv.second.ns = ns;
}

std::string TunerLayer::key_namespace(const std::string& adapter, const std::string& key) const {
  auto it = params_.find({adapter, key});
  return it == params_.end() ? std::string() : it->second.ns;
}

void Tuner::inject_all(PeftModel& pm, const std::string& name, const nlohmann::json& cfg) const {
  pm.inject_modules(name, *this, cfg);
}

nlohmann::json Tuner::defaults() const {
  auto table = fields();
  PEFT_CHECK(!table.empty(), "tuner ", peft_type(), " declares neither fields() nor defaults()");
  return defaults_of(peft_type(), table);
}

std::vector<std::string> Tuner::extension_keys() const {
  std::vector<std::string> out;
  for (auto& f : fields())
    if (f.ours) out.push_back(f.name);
  return out;
}

std::vector<std::string> Tuner::config_keys() const {
  const nlohmann::json d = defaults();
  std::vector<std::string> out;
  for (auto& kv : d.items()) out.push_back(kv.key());
  for (auto& k : extension_keys())
    if (!d.contains(k)) out.push_back(k);
  return out;
}

void Tuner::check(const nlohmann::json& cfg) const {
  auto table = fields();
  if (!table.empty()) check_fields(peft_type(), table, cfg);
  validate(cfg);
}

bool TunerLayer::has_param(const std::string& adapter, const std::string& key) const {
  return params_.count({adapter, key}) > 0;
}

std::vector<std::pair<std::string, torch::Tensor>> TunerLayer::adapter_tensors(const std::string& adapter) const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& kv : params_)
    if (kv.first.first == adapter) out.emplace_back(kv.first.second, kv.second.tensor);
  return out;
}

std::vector<torch::Tensor> TunerLayer::trainable_tensors(const std::string& adapter) const {
  std::vector<torch::Tensor> out;
  for (auto& kv : params_)
    if (kv.first.first == adapter && kv.second.trainable) out.push_back(kv.second.tensor);
  return out;
}

int64_t TunerLayer::trainable_numel(const std::string& adapter) const {
  int64_t n = 0;
  for (auto& t : trainable_tensors(adapter))
    if (t.requires_grad()) n += t.numel();
  return n;
}

std::vector<std::string> TunerLayer::live_adapters() const {
  std::vector<std::string> out;
  if (disabled || row_groups) return out;
  for (auto& a : active)
    if (adapters_.count(a) && !merged.count(a)) out.push_back(a);
  return out;
}

void TunerLayer::remove_adapter(const std::string& a) {
  for (auto it = params_.begin(); it != params_.end();) it = it->first.first == a ? params_.erase(it) : std::next(it);
  for (auto it = containers_.begin(); it != containers_.end();) {
    const std::string& k = it->first;
    if (k.size() > a.size() + 1 && k.compare(k.size() - a.size() - 1, std::string::npos, "/" + a) == 0) {
      containers_.at(k.substr(0, k.size() - a.size() - 1))->unregister_module(a);
      it = containers_.erase(it);
      continue;
    }
    if (auto bag = std::dynamic_pointer_cast<ParamBag>(it->second)) bag->drop(a);
    ++it;
  }
  adapters_.erase(a);
  active.erase(std::remove(active.begin(), active.end(), a), active.end());
  user_scale.erase(a);
}

torch::Tensor TunerLayer::rows_of(const std::string& a, const torch::Tensor& x) const {
  PEFT_CHECK(x.dim() >= 1 && x.size(0) == row_groups->batch, "mixed-adapter batch: a ", method(), " layer got ",
             x.dim() ? x.size(0) : 0, " rows, the batch has ", row_groups->batch,
             " (this model reshapes its batch inside a layer: mixed-adapter batches are not supported for it)");
  for (auto& g : row_groups->rows)
    if (g.first == a) return g.second.device() == x.device() ? g.second : g.second.to(x.device());
  return {};
}

torch::Tensor TunerLayer::additive_forward(const torch::Tensor& x, const Term& term) {
  auto y = base_forward(x);
  // Half activations (keeps_half_activations): the terms see x in float32 and are summed with
  // the base output in float32, rounded to its dtype once (peft 0.13's LoRA forward under
  // autocast_adapter_dtype). With float32 activations both casts are no-ops.
  const auto xt = x.to(trainable_dtype(x.scalar_type()));
  if (!row_groups) {
    auto out = y;
    for (auto& a : live_adapters()) out = out + term(a, xt);
    return out.to(y.scalar_type());
  }
  for (auto& g : row_groups->rows) {
    if (!adapters_.count(g.first)) continue;  // this adapter does not target this module
    auto idx = rows_of(g.first, x);
    y = y.index_add(0, idx, term(g.first, xt.index_select(0, idx)).to(y.scalar_type()));
  }
  return y;
}

torch::Tensor TunerLayer::row_factors(const torch::Tensor& x, const std::function<torch::Tensor(const std::string&)>& value) const {
  torch::Tensor f;
  for (auto& g : row_groups->rows) {
    if (!adapters_.count(g.first)) continue;
    auto v = value(g.first);
    if (!v.defined()) continue;
    auto idx = rows_of(g.first, x);
    if (!f.defined()) f = torch::ones({x.size(0), x.size(-1)}, v.options());
    f = f.index_copy(0, idx, (f.index_select(0, idx) * v).contiguous());
  }
  if (!f.defined()) return f;
  std::vector<int64_t> shape(x.dim(), 1);
  shape.front() = x.size(0);
  shape.back() = x.size(-1);
  return f.view(shape);
}

void TunerLayer::merge(const std::string& a) {
  torch::NoGradGuard ng;
  auto d = delta_weight(a);
  PEFT_CHECK(d.defined(), method(), " adapters cannot be merged into the base weights (adapter '", a, "')");
  auto W = base_linear().weight_out_in();
  W.add_(d.to(W.scalar_type()));
}
void TunerLayer::unmerge(const std::string& a) {
  torch::NoGradGuard ng;
  auto d = delta_weight(a);
  PEFT_CHECK(d.defined(), method(), " adapters cannot be merged into the base weights (adapter '", a, "')");
  auto W = base_linear().weight_out_in();
  W.sub_(d.to(W.scalar_type()));
}

std::string TrainableReport::to_string() const {
  std::string s = str_cat("trainable params: ", trainable, " || all params: ", total,
                          " || trainable%: ", percent());
  for (auto& kv : by_method) s += str_cat("\n  ", kv.first, ": ", kv.second);
  return s;
}

}  // namespace peft
