// GradBuckets: trainable gradients all-reduced through flat buffers (Li et al. 2020, "PyTorch
// Distributed", sec. 3.2.3: bucketing amortises the per-call cost of a collective).
#include <torch/torch.h>

#include <chrono>

#include "peft/dist.h"
#include "peft/error.h"

namespace peft::dist {

GradBuckets::GradBuckets(GroupPtr group, std::vector<torch::Tensor> params, double cap_mb)
    : group_(std::move(group)), params_(std::move(params)) {
  PEFT_CHECK(cap_mb > 0, "training option 'ddp_bucket_cap_mb' must be > 0, got ", cap_mb);
  const int64_t cap = static_cast<int64_t>(cap_mb * 1024 * 1024);
  int64_t bytes = 0;
  // Reverse order: backward produces the last layers' gradients first.
  for (size_t i = params_.size(); i-- > 0;) {
    const auto& p = params_[i];
    PEFT_CHECK(p.device().is_cpu(), "distributed: parameter on ", p.device(), ": the Gloo backend reduces CPU tensors");
    const int64_t nb = p.numel() * static_cast<int64_t>(p.element_size());
    bool fresh = buckets_.empty() || params_[buckets_.back().members.front()].scalar_type() != p.scalar_type() ||
                 (bytes + nb > cap && !buckets_.back().members.empty());
    if (fresh) {
      buckets_.push_back({});
      bytes = 0;
    }
    buckets_.back().members.push_back(i);
    bytes += nb;
  }
  for (auto& b : buckets_) {
    int64_t n = 0;
    for (size_t m : b.members) n += params_[m].numel();
    b.flat = torch::zeros({n}, torch::TensorOptions().dtype(params_[b.members.front()].scalar_type()));
  }
}

void GradBuckets::reduce(torch::Tensor stats) {
  torch::NoGradGuard ng;
  auto t0 = std::chrono::steady_clock::now();
  const int64_t ns = stats.defined() ? stats.numel() : 0, P = static_cast<int64_t>(params_.size());
  // Which ranks have a gradient for each parameter rides along with the caller's numbers.
  auto extra = torch::zeros({ns + P}, torch::kFloat64);
  if (ns) extra.narrow(0, 0, ns).copy_(stats.reshape({-1}));
  auto flags = extra.accessor<double, 1>();
  for (int64_t i = 0; i < P; ++i) flags[ns + i] = params_[static_cast<size_t>(i)].grad().defined() ? 1.0 : 0.0;
  std::vector<torch::Tensor> all{extra};
  for (auto& b : buckets_) {
    int64_t off = 0;
    for (size_t m : b.members) {
      const auto& g = params_[m].grad();
      const int64_t n = params_[m].numel();
      auto slot = b.flat.narrow(0, off, n);
      if (g.defined()) slot.copy_(g.reshape({-1}));
      else slot.zero_();
      off += n;
    }
    all.push_back(b.flat);
  }
  group_->all_reduce_sum(all, "gradient all-reduce");
  for (auto& b : buckets_) {
    int64_t off = 0;
    for (size_t m : b.members) {
      auto& p = params_[m];
      const int64_t n = p.numel();
      if (flags[ns + static_cast<int64_t>(m)] > 0) {
        auto v = b.flat.narrow(0, off, n).view(p.sizes());
        if (p.grad().defined()) p.mutable_grad().copy_(v);
        else p.mutable_grad() = v.clone();
      }
      off += n;
    }
  }
  if (ns) stats.copy_(extra.narrow(0, 0, ns).view(stats.sizes()));
  last_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void GradBuckets::broadcast_parameters() {
  torch::NoGradGuard ng;
  for (auto& b : buckets_) {
    int64_t off = 0;
    for (size_t m : b.members) {
      b.flat.narrow(0, off, params_[m].numel()).copy_(params_[m].reshape({-1}));
      off += params_[m].numel();
    }
    group_->broadcast(b.flat, 0, "broadcast of the initial trainable parameters");
    off = 0;
    for (size_t m : b.members) {
      params_[m].copy_(b.flat.narrow(0, off, params_[m].numel()).view(params_[m].sizes()));
      off += params_[m].numel();
    }
  }
}

}  // namespace peft::dist
