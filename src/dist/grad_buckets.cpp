// GradBuckets: trainable gradients all-reduced through flat buffers (Li et al. 2020, "PyTorch
// Distributed", sec. 3.2.3: bucketing amortises the per-call cost of a collective, and starting a
// bucket's sum as soon as its gradients are final overlaps communication with backward).
#include <torch/torch.h>

#include <chrono>

#include "peft/dist.h"
#include "peft/error.h"

namespace peft::dist {

GradBuckets::GradBuckets(GroupPtr group, std::vector<torch::Tensor> params, double cap_mb, bool overlap)
    : group_(std::move(group)), params_(std::move(params)), overlap_(overlap) {
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
  where_.resize(params_.size());
  seen_.assign(params_.size(), 0);
  for (size_t b = 0; b < buckets_.size(); ++b) {
    int64_t n = 0;
    for (size_t m : buckets_[b].members) {
      where_[m] = {b, n};
      n += params_[m].numel();
    }
    buckets_[b].flat = torch::zeros({n}, torch::TensorOptions().dtype(params_[buckets_[b].members.front()].scalar_type()));
  }
  if (overlap_)
    for (size_t i = 0; i < params_.size(); ++i) {
      PEFT_CHECK(params_[i].requires_grad(), "distributed: a trainable parameter does not require grad");
      hooks_.push_back(params_[i].register_hook([this, i](const torch::Tensor& g) { on_gradient(i, g); }));
    }
}

GradBuckets::~GradBuckets() {
  for (size_t i = 0; i < hooks_.size(); ++i) {
    try {
      params_[i].remove_hook(hooks_[i]);
    } catch (...) {
    }
  }
}

void GradBuckets::arm() { armed_ = overlap_; }

// The hook sees this backward's whole gradient of parameter i before autograd adds it to .grad;
// the bucket gets the sum autograd is about to store (earlier micro-batches' .grad + this one).
void GradBuckets::on_gradient(size_t i, const torch::Tensor& grad) {
  if (!armed_ || hook_error_ || !grad.defined()) return;
  try {
    auto& b = buckets_[where_[i].first];
    PEFT_CHECK(!b.started && !seen_[i], "distributed: the gradient of a trainable parameter arrived twice in one "
               "backward, after its bucket's sum had started");
    torch::NoGradGuard ng;
    auto s = slot(i);
    const auto& prev = params_[i].grad();
    if (prev.defined()) torch::add_out(s, prev.reshape({-1}), grad.reshape({-1}));
    else s.copy_(grad.reshape({-1}));
    seen_[i] = 1;
    if (++b.ready == b.members.size()) start_ready_buckets();
  } catch (...) {
    hook_error_ = std::current_exception();  // rethrown by reduce(), outside autograd
  }
}

void GradBuckets::start(Bucket& b) {
  group_->start_all_reduce_sum(b.flat, "gradient all-reduce");
  b.started = true;
}

void GradBuckets::start_ready_buckets() {
  while (next_ < buckets_.size() && buckets_[next_].ready == buckets_[next_].members.size()) {
    start(buckets_[next_++]);
    ++in_backward_;
  }
}

void GradBuckets::reduce(torch::Tensor stats) {
  torch::NoGradGuard ng;
  auto t0 = std::chrono::steady_clock::now();
  armed_ = false;
  if (hook_error_) std::rethrow_exception(std::exchange(hook_error_, nullptr));
  const int64_t ns = stats.defined() ? stats.numel() : 0, P = static_cast<int64_t>(params_.size());
  // Which ranks have a gradient for each parameter rides along with the caller's numbers.
  auto extra = torch::zeros({ns + P}, torch::kFloat64);
  if (ns) extra.narrow(0, 0, ns).copy_(stats.reshape({-1}));
  auto flags = extra.accessor<double, 1>();
  for (int64_t i = 0; i < P; ++i) {
    const size_t m = static_cast<size_t>(i);
    flags[ns + i] = seen_[m] || params_[m].grad().defined() ? 1.0 : 0.0;
  }
  // The buckets backward did not start, in bucket order, then the flags.
  for (; next_ < buckets_.size(); ++next_) {
    auto& b = buckets_[next_];
    for (size_t m : b.members) {
      if (seen_[m]) continue;
      const auto& g = params_[m].grad();
      if (g.defined()) slot(m).copy_(g.reshape({-1}));
      else slot(m).zero_();
    }
    start(b);
  }
  group_->start_all_reduce_sum(extra, "gradient all-reduce");
  group_->finish_pending();
  for (auto& b : buckets_) {
    for (size_t m : b.members) {
      auto& p = params_[m];
      if (flags[ns + static_cast<int64_t>(m)] > 0) {
        auto v = slot(m).view(p.sizes());
        if (p.grad().defined()) p.mutable_grad().copy_(v);
        else p.mutable_grad() = v.clone();
      }
      seen_[m] = 0;
    }
    b.ready = 0;
    b.started = false;
  }
  next_ = 0;
  last_in_backward_ = std::exchange(in_backward_, 0);
  if (ns) stats.copy_(extra.narrow(0, 0, ns).view(stats.sizes()));
  last_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void GradBuckets::broadcast_parameters() {
  torch::NoGradGuard ng;
  for (auto& b : buckets_) {
    for (size_t m : b.members) slot(m).copy_(params_[m].reshape({-1}));
    group_->broadcast(b.flat, 0, "broadcast of the initial trainable parameters");
    for (size_t m : b.members)
      params_[m].copy_(slot(m).view(params_[m].sizes()));
  }
}

}  // namespace peft::dist
