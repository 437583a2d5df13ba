// The fused half-precision RMSNorm and SwiGLU (src/models/fused_ops.h): forward bit-identical to
// the composite ops; gradients against float64 autograd (RMSNorm) or bit-identical to autograd on
// the composite (SwiGLU); and less kept alive for the backward than the composite.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "models/fused_ops.h"
#include "peft/precision.h"

namespace {

torch::Tensor composite_rms(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  auto h = x.to(torch::kFloat32);
  return w * (h * torch::rsqrt(h.pow(2).mean(-1, true) + eps)).to(x.scalar_type());
}

double max_abs(const torch::Tensor& t) { return t.abs().max().item<double>(); }

TEST(FusedOps, RmsNormHalfForwardIsBitIdenticalAndGradientsMatchFloat64) {
  torch::manual_seed(3);
  const double eps = 1e-6;
  auto x = (torch::randn({3, 7, 64}) * 2).to(torch::kBFloat16).requires_grad_(true);
  // A trainable float32 weight (LN tuning on a bfloat16 base) exercises both gradients and the
  // dtype promotion of weight * half(h r).
  auto w = (1 + 0.3 * torch::randn({64})).requires_grad_(true);
  auto dy = torch::randn({3, 7, 64});

  auto y = peft::rms_norm(x, w, eps);
  auto y_ref = composite_rms(x, w, eps);
  ASSERT_EQ(y.scalar_type(), y_ref.scalar_type());
  EXPECT_TRUE(torch::equal(y, y_ref)) << "forward differs from the composite";
  y.backward(dy);

  // float64 reference on the same (rounded) inputs: the exact derivative of w * h r.
  auto x64 = x.detach().to(torch::kFloat64).requires_grad_(true);
  auto w64 = w.detach().to(torch::kFloat64).requires_grad_(true);
  auto y64 = w64 * (x64 * torch::rsqrt(x64.pow(2).mean(-1, true) + eps));
  y64.backward(dy.to(torch::kFloat64));
  // bfloat16 keeps 8 significant bits: the output gradient is rounded once, dx once more.
  const double bf = std::ldexp(1.0, -8);
  EXPECT_LE(max_abs(x.grad().to(torch::kFloat64) - x64.grad()), 4 * bf * max_abs(x64.grad()));
  EXPECT_LE(max_abs(w.grad().to(torch::kFloat64) - w64.grad()), 4 * bf * max_abs(w64.grad()));
  EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16);
  EXPECT_EQ(w.grad().scalar_type(), torch::kFloat32);

  // And close to autograd on the composite (the float32 sums in another order).
  auto xc = x.detach().clone().requires_grad_(true);
  auto wc = w.detach().clone().requires_grad_(true);
  composite_rms(xc, wc, eps).backward(dy);
  EXPECT_LE(max_abs((x.grad() - xc.grad()).to(torch::kFloat32)), 2 * bf * max_abs(xc.grad().to(torch::kFloat32)));
}

TEST(FusedOps, RmsNormHalfFrozenWeightGivesInputGradientOnly) {
  torch::manual_seed(4);
  auto x = torch::randn({2, 5, 32}).to(torch::kBFloat16).requires_grad_(true);
  auto w = (1 + 0.1 * torch::randn({32})).to(torch::kBFloat16);  // a frozen bfloat16 norm weight
  auto y = peft::rms_norm(x, w, 1e-5);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(y, composite_rms(x, w, 1e-5)));
  y.sum().backward();
  ASSERT_TRUE(x.grad().defined());
  // sum(y) is invariant to scaling a row of x (RMSNorm is scale-invariant), so dx . x = 0 per row.
  auto dot = (x.grad().to(torch::kFloat64) * x.detach().to(torch::kFloat64)).sum(-1);
  auto scale = (x.grad().to(torch::kFloat64).abs() * x.detach().to(torch::kFloat64).abs()).sum(-1);
  EXPECT_LE(max_abs(dot), 0.02 * max_abs(scale));
}

TEST(FusedOps, SiluMulMatchesAutogradOnTheCompositeBitForBit) {
  torch::manual_seed(5);
  auto g = (torch::randn({4, 9, 48}) * 3).to(torch::kBFloat16);
  auto u = torch::randn({4, 9, 48}).to(torch::kBFloat16);
  auto dy = torch::randn({4, 9, 48}).to(torch::kBFloat16);
  auto g1 = g.clone().requires_grad_(true), u1 = u.clone().requires_grad_(true);
  auto g2 = g.clone().requires_grad_(true), u2 = u.clone().requires_grad_(true);
  auto y1 = peft::silu_mul(g1, u1);
  auto y2 = torch::silu(g2) * u2;
  EXPECT_TRUE(torch::equal(y1, y2));
  y1.backward(dy);
  y2.backward(dy);
  EXPECT_TRUE(torch::equal(g1.grad(), g2.grad()));
  EXPECT_TRUE(torch::equal(u1.grad(), u2.grad()));
}

// Bytes of tensors still allocated once the forward returns (what the graph keeps for the
// backward, plus the output), inputs created outside the meter.
template <class F>
int64_t bytes_kept(F&& forward) {
  peft::TensorBytesMeter meter;
  auto y = forward();
  return meter.current();
}

TEST(FusedOps, KeepLessForTheBackwardThanTheComposite) {
  torch::manual_seed(6);
  const int64_t N = 256, H = 512;
  auto x = torch::randn({N, H}).to(torch::kBFloat16).requires_grad_(true);
  auto w = torch::ones({H}, torch::kBFloat16);
  const int64_t fused = bytes_kept([&] { return peft::rms_norm(x, w, 1e-6); });
  const int64_t composite = bytes_kept([&] { return composite_rms(x, w, 1e-6); });
  // Composite: the bfloat16 output plus the float32 copy h (4 bytes / entry); fused: the output
  // and r ([N, 1] float32) only (x is the caller's).
  EXPECT_LT(fused, N * H * 2 + N * 4 + 4096);
  EXPECT_GE(composite, N * H * (2 + 4));

  auto g = torch::randn({N, H}).to(torch::kBFloat16).requires_grad_(true);
  auto u = torch::randn({N, H}).to(torch::kBFloat16).requires_grad_(true);
  const int64_t fused_mlp = bytes_kept([&] { return peft::silu_mul(g, u); });
  const int64_t composite_mlp = bytes_kept([&] { return torch::silu(g) * u; });
  EXPECT_LT(fused_mlp, N * H * 2 + 4096);         // the output only
  EXPECT_GE(composite_mlp, N * H * 2 * 2);        // the output and silu(g)
}

}  // namespace
