// The LoRA inits and variants (lora_variants.h), and the two tables that pick them from a config.
#include "tuners/lora_variants.h"

#include <cmath>

#include "models/quant_linear.h"
#include "peft/error.h"
#include "peft/precision.h"
#include "tuners/loftq.h"
#include "tuners/lora_layer.h"

namespace peft {
namespace {

// ---- Initialisations (init_lora_weights) ----

/// LoRA's own (Hu et al. 2021, sec. 4.1): A Kaiming-uniform (as nn.Linear), B = 0, so the
/// model starts as the base. `both_random` (init_lora_weights false, peft's test switch): B too.
class KaimingInit : public LoraInit {
 public:
  explicit KaimingInit(bool both_random) : both_random_(both_random) {}
  std::string name() const override { return both_random_ ? "false" : "default"; }
  LoraFactors factors(Linear& lin, const LoraOptions& o, bool) const override {
    const int64_t in = lin.in_features, out = lin.out_features;
    auto A = kaiming_uniform({o.r, in}, in);
    auto B = both_random_ ? kaiming_uniform({out, o.r}, o.r) : torch::zeros({out, o.r});
    return {A, B};
  }

 private:
  bool both_random_;
};

/// peft's "gaussian": A ~ N(0, 1/r^2), B = 0.
class GaussianInit : public LoraInit {
 public:
  std::string name() const override { return "gaussian"; }
  LoraFactors factors(Linear& lin, const LoraOptions& o, bool) const override {
    return {torch::randn({o.r, lin.in_features}) / static_cast<double>(o.r), torch::zeros({lin.out_features, o.r})};
  }
};

/// Inits that take A, B from a decomposition of W0 and leave the base the residual
/// W0 - s B A: PiSSA (Meng et al. 2024: the top-r singular triplets, A = sqrt(S_r) V_r^T,
/// B = U_r sqrt(S_r), divided by s so that s B A is the rank-r part) and OLoRA (Büyükakyüz 2024:
/// W0 = Q R, B = Q[:, :r], A = R[:r]). Loading: placeholders (the file has the factors, saved as
/// the equivalent plain LoRA, so its config no longer names the init).
class DecompositionInit : public LoraInit {
 public:
  explicit DecompositionInit(bool svd) : svd_(svd) {}
  std::string name() const override { return svd_ ? "pissa" : "olora"; }
  void check_quantized_base(const std::string& qt, bool loading) const override {
    PEFT_CHECK(loading, svd_ ? "PiSSA" : "OLoRA", " needs the float base weight; the base is quantized (", qt,
               "): use plain LoRA (or rsLoRA, LoRA-FA, DyLoRA) on a quantized base, or load it in float");
  }
  LoraFactors factors(Linear& lin, const LoraOptions& o, bool loading) const override {
    if (loading) return KaimingInit(false).factors(lin, o, loading);
    auto W = lin.weight_out_in();
    auto Wf = W.to(torch::kFloat32);
    const int64_t r = o.r;
    torch::Tensor A, B;
    if (svd_) {
      auto svd = torch::linalg_svd(Wf, /*full_matrices=*/false);
      auto U = std::get<0>(svd), S = std::get<1>(svd), Vh = std::get<2>(svd);
      PEFT_CHECK(r <= S.size(0), "PiSSA: r = ", r, " exceeds the rank bound ", S.size(0));
      auto Sr = S.slice(0, 0, r) / o.scaling;
      A = torch::diag(Sr.sqrt()).matmul(Vh.slice(0, 0, r));
      B = U.slice(1, 0, r).matmul(torch::diag(Sr.sqrt()));
    } else {
      auto qr = torch::linalg_qr(Wf);
      auto Q = std::get<0>(qr), R = std::get<1>(qr);
      PEFT_CHECK(r <= Q.size(1), "OLoRA: r = ", r, " exceeds min(in, out) = ", Q.size(1));
      A = R.slice(0, 0, r).contiguous();
      B = Q.slice(1, 0, r).contiguous();
    }
    W.sub_((o.scaling * B.matmul(A)).to(trainable_dtype(W.scalar_type())));  // the base keeps the residual
    return {A, B, /*base_changed=*/true};
  }

 private:
  bool svd_;
};

/// LoftQ (Li et al. 2023, Algorithm 1; tuners/loftq.h): W0 becomes dequant(Q_T) of the
/// alternating quantization / SVD, A and B start from the SVD of the last residual. peft re-runs
/// it when it loads such an adapter, so the base becomes dequant(Q_T) again (deterministic);
/// the factors then come from the file.
class LoftQInit : public LoraInit {
 public:
  std::string name() const override { return "loftq"; }
  void check_quantized_base(const std::string& qt, bool loading) const override {
    // A saved LoftQ adapter over a quantized base takes that base as the one it was made for.
    PEFT_CHECK(loading, "LoftQ needs the float base weight to quantize; the base is already quantized (", qt,
               "): load the float model (peft train --quantize nf4 does so for LoftQ and quantizes after the "
               "initialisation)");
  }
  LoraFactors factors(Linear& lin, const LoraOptions& o, bool loading) const override {
    torch::Tensor A, B;
    if (!as_quantized(&lin)) {
      auto W = lin.weight_out_in();
      auto lq = loftq_decompose(W, o.loftq_bits, o.r, o.loftq_iter, /*factors=*/!loading);
      W.copy_(lq.base.to(W.scalar_type()));
      A = lq.A.defined() ? lq.A.contiguous() : lq.A;  // slices of the SVD's factors
      B = lq.B.defined() ? lq.B.contiguous() : lq.B;
    }
    if (!A.defined()) {
      A = torch::zeros({o.r, lin.in_features});
      B = torch::zeros({lin.out_features, o.r});
    }
    return {A, B};
  }
};

// ---- Variants ----

/// rsLoRA (Kalajdzievski 2023, sec. 3): s = α / sqrt(r), stable across ranks.
class RsLora : public LoraVariant {
 public:
  std::string name() const override { return "rsLoRA"; }
  std::optional<double> scale(double alpha, int64_t rank) const override { return alpha / std::sqrt((double)rank); }
};

/// DoRA (Liu et al. 2024, eq. 5): W' = m · (W0 + sBA) / ||W0 + sBA||_c with m initialised to
/// ||W0 + sBA||_c (row norms of the [out, in] weight); the norm is detached in the forward as
/// the paper's sec. 4.3 suggests. Written as a correction of base(x) = x W^T + b:
/// (m/n - 1)(x W^T) + (m/n) s x A^T B^T.
class Dora : public LoraVariant {
 public:
  std::string name() const override { return "DoRA"; }
  bool needs_float_base() const override { return true; }
  void added(LoraLinear& l, const std::string& a, const LoraOptions& o, const torch::Tensor& A,
             const torch::Tensor& B) const override {
    auto W = l.base_linear().weight_out_in();
    l.add_param(a, "lora_magnitude_vector",
                LoraLinear::row_norm(W.to(torch::kFloat32) + o.scaling * B.matmul(A)).to(trainable_dtype(W.scalar_type())));
  }
  torch::Tensor term(LoraLinear& l, const std::string& a, const LoraTermInput& in, torch::Tensor lora) const override {
    auto W = l.base_linear().weight_out_in();
    auto norm = LoraLinear::row_norm(W + in.s * in.B.matmul(in.A)).detach();
    auto mag = l.param(a, "lora_magnitude_vector") / norm;  // [out]
    return (mag - 1) * (W.scalar_type() == in.xd.scalar_type() ? torch::nn::functional::linear(in.xd, W)
                                                                 : frozen_linear(in.xd, W, {}, false, W.scalar_type())) +
           mag * lora;
  }
  bool gatherable(bool) const override { return false; }
  // The forward normalises the innermost base weight, not the output of an adapter it is
  // stacked on, so no merged weight reproduces it there.
  bool mergeable(const LoraLinear& l) const override { return !dynamic_cast<TunerLayer*>(l.base_layer.get()); }
  bool merge(LoraLinear& l, const std::string& a, torch::Tensor& W, const torch::Tensor& d) const override {
    auto V = W + d;
    auto n = LoraLinear::row_norm(V);
    l.dora_norm[a] = n;
    W.copy_((l.param(a, "lora_magnitude_vector") / n).unsqueeze(1) * V);
    return true;
  }
  bool unmerge(LoraLinear& l, const std::string& a, torch::Tensor& W, const torch::Tensor& d) const override {
    W.copy_(W / (l.param(a, "lora_magnitude_vector") / l.dora_norm.at(a)).unsqueeze(1) - d);
    return true;
  }
};

/// LoRA-FA (Zhang et al. 2023): A frozen at its random init, only B trains.
class LoraFa : public LoraVariant {
 public:
  std::string name() const override { return "LoRA-FA"; }
  bool freezes_A() const override { return true; }
};

/// DyLoRA (Valipour et al. 2023, eq. 3): each training forward uses the first b ~ U{1..r} ranks
/// with the scale of rank b (nested-dropout style), so every prefix rank works at inference.
class DyLora : public LoraVariant {
 public:
  std::string name() const override { return "DyLoRA"; }
  void sample(const LoraOptions& o, torch::Tensor& A, torch::Tensor& B, double& s) const override {
    if (o.r <= 1) return;
    int64_t b = torch::randint(1, o.r + 1, {1}).item<int64_t>();
    A = A.slice(0, 0, b);
    B = B.slice(1, 0, b);
    s = o.scale_for(b);
  }
  bool gatherable(bool training) const override { return !training; }
};

/// Delta-LoRA (Zi et al. 2023, eq. 8): after each step from delta_lora_start on, the base
/// moves too: W += λ (B_{t+1} A_{t+1} − B_t A_t). Until then B_K A_K tracks the latest product.
class DeltaLora : public LoraVariant {
 public:
  std::string name() const override { return "Delta-LoRA"; }
  bool needs_float_base() const override { return true; }
  void added(LoraLinear& l, const std::string& a, const LoraOptions&, const torch::Tensor& A,
             const torch::Tensor& B) const override {
    l.res_A[a] = l.param(a, "lora_A.weight").clone();
    l.res_B[a] = l.param(a, "lora_B.weight").clone();
    l.res_coef[a] = 0;
    l.prev_BA[a] = B.matmul(A).to(trainable_dtype(l.base_linear().weight_out_in().scalar_type()));
  }
  void after_step(LoraLinear& l, const std::string& a, const LoraOptions& o, int64_t step) const override {
    torch::NoGradGuard ng;
    auto BA = l.param(a, "lora_B.weight").matmul(l.param(a, "lora_A.weight"));
    if (step < o.delta_start) {  // not yet: B_K A_K is the latest product
      l.res_A[a] = l.param(a, "lora_A.weight").clone();
      l.res_B[a] = l.param(a, "lora_B.weight").clone();
      l.prev_BA[a] = BA;
      return;
    }
    l.base_linear().weight_out_in().add_(o.delta_lambda * (BA - l.prev_BA[a]));
    l.prev_BA[a] = BA;
    l.delta_started.insert(a);
    l.res_coef[a] = -o.delta_lambda;  // W = W0 + λ B A − λ B_K A_K
  }
};

/// Gated LoRA (lora_gate; UniPELT, Mao et al. 2022, sec. 3.2): h = W0 x + G_L · s B A x with the
/// per-token gate G_L = sigmoid(W_g x + b_g), W_g [1, in] (nn.Linear init); not mergeable (the
/// gate depends on the input).
class GatedLora : public LoraVariant {
 public:
  std::string name() const override { return "gated LoRA"; }
  void added(LoraLinear& l, const std::string& a, const LoraOptions&, const torch::Tensor& A, const torch::Tensor&) const override {
    const int64_t in = A.size(1);
    auto dt = l.param(a, "lora_A.weight").scalar_type();
    l.add_param(a, "lora_gate.weight", kaiming_uniform({1, in}, in).to(dt));
    l.add_param(a, "lora_gate.bias", kaiming_uniform({1}, in).to(dt));
  }
  torch::Tensor term(LoraLinear& l, const std::string& a, const LoraTermInput& in, torch::Tensor lora) const override {
    return lora * torch::sigmoid(torch::nn::functional::linear(in.x, l.param(a, "lora_gate.weight"), l.param(a, "lora_gate.bias")));
  }
  bool gatherable(bool) const override { return false; }
  bool mergeable(const LoraLinear&) const override { return false; }
};

}  // namespace

double LoraOptions::scale_for(int64_t rank) const {
  for (auto* v : variants)
    if (auto s = v->scale(alpha, rank)) return *s;
  return alpha / static_cast<double>(rank);
}

bool LoraOptions::has(const std::string& variant) const {
  for (auto* v : variants)
    if (v->name() == variant) return true;
  return false;
}

const LoraInit& lora_init_of(const nlohmann::json& c) {
  static const KaimingInit kDefault(false), kFalse(true);
  static const GaussianInit kGaussian;
  static const DecompositionInit kPissa(true), kOlora(false);
  static const LoftQInit kLoftq;
  static const std::vector<const LoraInit*> kInits = {&kDefault, &kFalse, &kGaussian, &kPissa, &kOlora, &kLoftq};
  const auto& v = c.at("init_lora_weights");
  const std::string name = v.is_string() ? v.get<std::string>() : (v.get<bool>() ? "default" : "false");
  for (auto* i : kInits)
    if (i->name() == name) return *i;
  fail("adapter config: field 'init_lora_weights' (LORA): no init named ", v.dump());
}

std::vector<const LoraVariant*> lora_variants_of(const nlohmann::json& c) {
  static const RsLora kRs;
  static const Dora kDora;
  static const LoraFa kFa;
  static const DyLora kDy;
  static const DeltaLora kDelta;
  static const GatedLora kGate;
  // (variant, whether the config asks for it); the order is the order hooks run in.
  const std::vector<std::pair<const LoraVariant*, bool>> rows = {
      {&kRs, c.value("use_rslora", false)},
      {&kDora, c.value("use_dora", false)},
      {&kFa, c.value("lora_fa", false)},
      {&kDy, c.value("dylora", false)},
      {&kDelta, c.value("delta_lora_lambda", 0.0) > 0},
      {&kGate, c.value("lora_gate", false)},
  };
  std::vector<const LoraVariant*> out;
  for (auto& [v, on] : rows)
    if (on) out.push_back(v);
  return out;
}

}  // namespace peft
