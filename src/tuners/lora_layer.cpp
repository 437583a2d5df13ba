// The LoRA layer (lora_layer.h): h = base(x) + Σ_a term_a(x), term = s · B A dropout(x) as its
// variants change it, merge W += s B A, and the per-row (Punica) form of a mixed batch.
#include "tuners/lora_layer.h"

#include "models/quant_linear.h"
#include "peft/error.h"
#include "peft/precision.h"

namespace peft {

std::string LoraLinear::method() const {
  return !opt.empty() && opt.begin()->second.has("DoRA") ? "dora" : "lora";
}

void LoraLinear::add(const std::string& a, const LoraOptions& o, bool loading) {
  opt[a] = o;
  Linear& lin = base_linear();
  // A quantized base (models/quant_linear.h) has no float weight to decompose, normalise or update.
  if (auto* q = as_quantized(&lin)) {
    for (auto* v : o.variants)
      PEFT_CHECK(!v->needs_float_base(), v->name(), " needs the float base weight; the base is quantized (",
                 quant::quant_type_name(q->type), "): use plain LoRA (or rsLoRA, LoRA-FA, DyLoRA) on a quantized base, "
                 "or load it in float");
    o.init->check_quantized_base(quant::quant_type_name(q->type), loading);
  }
  auto dt = trainable_dtype(lin.weight_out_in().scalar_type());  // adapters in float32 on a half base
  torch::NoGradGuard ng;
  auto f = o.init->factors(lin, o, loading);
  if (f.base_changed) {
    res_A[a] = f.A.clone().to(dt);
    res_B[a] = f.B.clone().to(dt);
    res_coef[a] = -o.scaling;
  }
  bool train_A = true;
  for (auto* v : o.variants) train_A = train_A && !v->freezes_A();
  add_param(a, "lora_A.weight", f.A.to(dt), train_A);
  add_param(a, "lora_B.weight", f.B.to(dt));
  for (auto* v : o.variants) v->added(*this, a, o, f.A, f.B);
}

torch::Tensor LoraLinear::delta_weight(const std::string& a) {
  auto& o = opt.at(a);
  return o.scaling * scale_of(a) * param(a, "lora_B.weight").matmul(param(a, "lora_A.weight"));
}

torch::Tensor LoraLinear::term(const std::string& a, const torch::Tensor& x) {
  auto& o = opt.at(a);
  auto A = param(a, "lora_A.weight"), B = param(a, "lora_B.weight");
  double s = o.scaling;
  if (is_training())
    for (auto* v : o.variants) v->sample(o, A, B, s);
  s *= scale_of(a);
  auto xd = o.dropout > 0 ? torch::dropout(x, o.dropout, is_training()) : x;
  auto lora = torch::nn::functional::linear(torch::nn::functional::linear(xd, A), B) * s;
  const LoraTermInput in{x, xd, A, B, s};
  for (auto* v : o.variants) lora = v->term(*this, a, in, lora);
  return lora;
}

torch::Tensor LoraLinear::forward(const torch::Tensor& x) {
  if (row_groups && gatherable()) return gathered_forward(x);
  return additive_forward(x, [this](const std::string& a, const torch::Tensor& xa) { return term(a, xa); });
}

/// A mixed batch whose adapters here are plain LoRA factors of one rank, two or more of them:
/// computed in one pass for all rows (gathered_forward) instead of one product per adapter.
bool LoraLinear::gatherable() const {
  int64_t r = -1, groups = 0;
  for (auto& g : row_groups->rows) {
    auto it = opt.find(g.first);
    if (it == opt.end() || !adapters_.count(g.first)) continue;
    const auto& o = it->second;
    if (is_training() && o.dropout > 0) return false;
    for (auto* v : o.variants)
      if (!v->gatherable(is_training())) return false;
    if (r >= 0 && o.r != r) return false;
    r = o.r;
    ++groups;
  }
  return groups >= 2;
}

/// Punica / S-LoRA's gathered form (Chen et al. 2023, "Punica", BGMV): each row's factors are
/// gathered from the stacked adapters (a zero adapter for rows without one here) and
/// y_i = base(x_i) + s_i (x_i A_i^T) B_i^T is two batched products for the whole batch.
torch::Tensor LoraLinear::gathered_forward(const torch::Tensor& x) {
  auto y = base_forward(x);
  const int64_t Bn = x.size(0);
  std::vector<torch::Tensor> As, Bs;
  std::vector<double> scales;
  std::vector<std::pair<torch::Tensor, int64_t>> assign;
  for (auto& g : row_groups->rows) {
    if (!adapters_.count(g.first) || !opt.count(g.first)) continue;
    As.push_back(param(g.first, "lora_A.weight"));
    Bs.push_back(param(g.first, "lora_B.weight"));
    scales.push_back(opt.at(g.first).scaling * scale_of(g.first));
    assign.emplace_back(rows_of(g.first, x), static_cast<int64_t>(As.size()) - 1);
  }
  const int64_t zero = static_cast<int64_t>(As.size());
  As.push_back(torch::zeros_like(As[0]));
  Bs.push_back(torch::zeros_like(Bs[0]));
  scales.push_back(0.0);
  auto sel = torch::full({Bn}, zero, torch::dtype(torch::kLong).device(x.device()));
  for (auto& [idx, k] : assign) sel.index_fill_(0, idx, k);
  auto A = torch::stack(As).index_select(0, sel);   // [B, r, in]
  auto Bf = torch::stack(Bs).index_select(0, sel);  // [B, out, r]
  auto s = torch::tensor(scales, A.options()).index_select(0, sel).view({Bn, 1, 1});
  auto x3 = x.reshape({Bn, -1, x.size(-1)}).to(A.scalar_type());  // float32 on a half base, as term()
  auto d = torch::bmm(torch::bmm(x3, A.transpose(1, 2)), Bf.transpose(1, 2)) * s;  // [B, T, out]
  return (y + d.reshape(y.sizes())).to(y.scalar_type());
}

void LoraLinear::remove_adapter(const std::string& a) {
  TunerLayer::remove_adapter(a);
  for (auto* m : {&res_A, &res_B, &prev_BA, &dora_norm}) m->erase(a);
  res_coef.erase(a);
  opt.erase(a);
  delta_started.erase(a);
}

bool LoraLinear::keeps_half_activations() const {
  for (auto& kv : opt)
    for (auto* v : kv.second.variants)
      if (v->needs_float_base()) return false;
  return true;
}

bool LoraLinear::can_merge() const {
  for (auto& kv : opt)
    for (auto* v : kv.second.variants)
      if (!v->mergeable(*this)) return false;
  return true;
}

void LoraLinear::merge(const std::string& a) {
  torch::NoGradGuard ng;
  auto W = base_linear().weight_out_in();
  auto d = delta_weight(a).to(W.scalar_type());
  for (auto* v : opt.at(a).variants)
    if (v->merge(*this, a, W, d)) return;
  W.add_(d);
}

void LoraLinear::unmerge(const std::string& a) {
  torch::NoGradGuard ng;
  auto W = base_linear().weight_out_in();
  auto d = delta_weight(a).to(W.scalar_type());
  for (auto* v : opt.at(a).variants)
    if (v->unmerge(*this, a, W, d)) return;
  W.sub_(d);
}

void LoraLinear::after_step(const std::string& a, int64_t step) {
  if (merged.count(a)) return;
  auto& o = opt.at(a);
  for (auto* v : o.variants) v->after_step(*this, a, o, step);
}

// Inits that change the base (PiSSA, OLoRA) and Delta-LoRA are saved as the plain rank-2r LoRA
// that gives the same weights on the unmodified base: W0 + s [B, c B0] [A; A0].
std::vector<std::pair<std::string, torch::Tensor>> LoraLinear::adapter_tensors(const std::string& a) const {
  auto t = TunerLayer::adapter_tensors(a);
  if (!res_A.count(a)) return t;
  auto& o = opt.at(a);
  auto A = const_cast<LoraLinear*>(this)->param(a, "lora_A.weight").detach();
  auto B = const_cast<LoraLinear*>(this)->param(a, "lora_B.weight").detach();
  double lam = delta_started.count(a) ? o.delta_lambda : 0.0;
  double c0 = res_coef.at(a);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& kv : t) {
    if (kv.first == "lora_A.weight") out.emplace_back(kv.first, torch::cat({A, res_A.at(a)}, 0));
    else if (kv.first == "lora_B.weight")
      out.emplace_back(kv.first, torch::cat({B * ((o.scaling + lam) / o.scaling), res_B.at(a) * (c0 / o.scaling)}, 1));
    else out.push_back(kv);
  }
  return out;
}

}  // namespace peft
