#include "peft/precision.h"

#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "peft/error.h"
#include "peft/quant.h"

namespace peft {

namespace {
// -1: no override, else the ScalarType as an int.
std::atomic<int> g_matmul_override{-1};
}  // namespace

void check_compute_dtype(torch::ScalarType t, const torch::Device& device, const std::string& what) {
  PEFT_CHECK(!(t == torch::kFloat16 && device.is_cpu()), what.empty() ? std::string() : what + ": ",
             "float16 matrix products are not implemented on CPU by LibTorch 1.13 (use bfloat16 on CPU; float16 "
             "needs a CUDA device)");
}

torch::ScalarType linear_compute_dtype(torch::ScalarType weight) {
  int o = g_matmul_override.load(std::memory_order_relaxed);
  if (o >= 0 && weight == torch::kFloat32) return static_cast<torch::ScalarType>(o);
  return weight;
}

MatmulDtypeGuard::MatmulDtypeGuard(std::optional<torch::ScalarType> dtype) {
  int prev = g_matmul_override.load();
  if (prev >= 0) prev_ = static_cast<torch::ScalarType>(prev);
  g_matmul_override.store(dtype && *dtype != torch::kFloat32 ? static_cast<int>(*dtype) : -1);
}

MatmulDtypeGuard::~MatmulDtypeGuard() { g_matmul_override.store(prev_ ? static_cast<int>(*prev_) : -1); }

namespace {
thread_local bool t_half_activations = false;
}  // namespace

bool half_activations_allowed() { return t_half_activations; }

HalfActivations::HalfActivations(bool on) : prev_(t_half_activations) { t_half_activations = on; }

HalfActivations::~HalfActivations() { t_half_activations = prev_; }

torch::Tensor frozen_linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& bias, bool conv1d,
                            torch::ScalarType compute) {
  const auto out_dtype = x.scalar_type();
  if (is_half_dtype(compute)) check_compute_dtype(compute, x.device(), "Linear");
  auto xc = x.to(compute);
  auto wc = w.to(compute);  // no copy when w is stored in the compute dtype
  auto y = conv1d ? torch::matmul(xc, wc) : torch::nn::functional::linear(xc, wc);
  y = y.to(out_dtype);
  return bias.defined() ? y + bias.to(out_dtype) : y;
}

torch::Tensor tied_head_logits(const torch::Tensor& h, const torch::Tensor& E) {
  const auto cd = linear_compute_dtype(E.scalar_type());
  if (cd == E.scalar_type() && h.scalar_type() == cd) return torch::matmul(h, E.t());
  return frozen_linear(h, E, {}, false, cd);
}

torch::ScalarType parse_dtype_name(const std::string& s, const std::string& field, bool allow_double) {
  if (s == "float32" || s == "fp32") return torch::kFloat32;
  if (s == "bfloat16" || s == "bf16") return torch::kBFloat16;
  if (s == "float16" || s == "fp16") return torch::kFloat16;
  if (allow_double && (s == "float64" || s == "fp64")) return torch::kFloat64;
  fail(field, ": expected float32, bfloat16 or float16", allow_double ? " (or float64)" : "", ", got '", s, "'");
}

std::string dtype_name(torch::ScalarType t) { return quant::dtype_name(t); }  // one naming for both

int64_t promote_trainable_to_float32(torch::nn::Module& m) {
  int64_t n = 0;
  torch::NoGradGuard ng;
  for (auto& p : m.parameters()) {
    if (!p.requires_grad() || !is_half_dtype(p.scalar_type())) continue;
    p.set_data(p.detach().to(torch::kFloat32));
    ++n;
  }
  return n;
}

// ---- TensorBytesMeter --------------------------------------------------------------------------

struct TensorBytesMeter::State : c10::MemoryReportingInfoBase {
  mutable std::mutex mu;
  int64_t cur = 0, top = 0;
  void reportMemoryUsage(void*, int64_t alloc_size, int64_t, int64_t, c10::Device device) override {
    if (!device.is_cpu()) return;
    std::lock_guard<std::mutex> g(mu);
    cur += alloc_size;
    top = std::max(top, cur);
  }
  bool memoryProfilingEnabled() const override { return true; }
};

TensorBytesMeter::TensorBytesMeter() : state_(std::make_shared<State>()) {
  guard_ = new c10::DebugInfoGuard(c10::DebugInfoKind::PROFILER_STATE, state_);
}

TensorBytesMeter::~TensorBytesMeter() { delete static_cast<c10::DebugInfoGuard*>(guard_); }

int64_t TensorBytesMeter::current() const {
  std::lock_guard<std::mutex> g(state_->mu);
  return state_->cur;
}

int64_t TensorBytesMeter::peak() const {
  std::lock_guard<std::mutex> g(state_->mu);
  return state_->top;
}

}  // namespace peft
