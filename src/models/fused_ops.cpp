#include "models/fused_ops.h"

#include <torch/torch.h>

#include "peft/model.h"  // compute_dtype
#include "peft/precision.h"

namespace peft {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The composite forward (LlamaRMSNorm's ops, in their order); *r receives the per-row rsqrt.
torch::Tensor rms_norm_forward(const torch::Tensor& x, const torch::Tensor& weight, double eps, torch::Tensor* r) {
  auto h = x.to(compute_dtype(x.scalar_type()));
  *r = torch::rsqrt(h.pow(2).mean(-1, true) + eps);
  return weight * (h * *r).to(x.scalar_type());
}

class RMSNormHalfFn : public torch::autograd::Function<RMSNormHalfFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight, double eps) {
    torch::Tensor r;
    auto y = rms_norm_forward(x, weight, eps, &r);
    ctx->save_for_backward({x, weight, r});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const auto &x = s[0], &weight = s[1], &r = s[2];
    const auto& dy = grads[0];
    torch::Tensor dx, dw;
    // As the composite's autograd: the product's gradient in its dtype, cast to x's, then float32.
    auto g = (dy * weight).to(x.scalar_type()).to(torch::kFloat32);
    auto h = x.to(torch::kFloat32);
    if (ctx->needs_input_grad(0)) dx = (r * (g - h * (r * r) * (g * h).mean(-1, true))).to(x.scalar_type());
    if (ctx->needs_input_grad(1)) {
      auto n = (h * r).to(x.scalar_type());
      dw = (dy * n).reshape({-1, n.size(-1)}).sum(0).to(weight.scalar_type());
    }
    return {dx, dw, torch::Tensor()};
  }
};

class SiluMulFn : public torch::autograd::Function<SiluMulFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate, const torch::Tensor& up) {
    ctx->save_for_backward({gate, up});
    return torch::silu(gate) * up;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    const auto &gate = s[0], &up = s[1];
    const auto& dy = grads[0];
    torch::Tensor dg, du;
    if (ctx->needs_input_grad(0)) dg = at::silu_backward(dy * up, gate);
    if (ctx->needs_input_grad(1)) du = dy * torch::silu(gate);
    return {dg, du};
  }
};

bool needs_graph(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::GradMode::is_enabled() && (a.requires_grad() || b.requires_grad());
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  if (is_half_dtype(x.scalar_type()) && needs_graph(x, weight)) return RMSNormHalfFn::apply(x, weight, eps);
  torch::Tensor r;
  return rms_norm_forward(x, weight, eps, &r);  // float32 / float64 (autograd as before), or no graph
}

torch::Tensor silu_mul(const torch::Tensor& gate, const torch::Tensor& up) {
  if (!needs_graph(gate, up) || gate.sizes() != up.sizes() || gate.scalar_type() != up.scalar_type())
    return torch::silu(gate) * up;
  return SiluMulFn::apply(gate, up);
}

}  // namespace peft
