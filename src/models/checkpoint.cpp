#include "models/checkpoint.h"

#include <ATen/Context.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/accumulate_grad.h>
#include <torch/torch.h>

#include <memory>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "peft/error.h"

namespace peft {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What the backward needs besides the saved inputs: the function, which node inputs are
// segment inputs (and at which index of `inputs`), and the generator states at the forward.
struct Segment : torch::CustomClassHolder {
  SegmentFn fn;
  size_t n_inputs = 0;               // the original inputs vector's size
  std::vector<size_t> index;         // node input k < index.size() is inputs[index[k]]
  std::vector<bool> needs_grad;      // per node input (inputs, then parameters)
  std::vector<torch::Tensor> params;
  torch::Tensor cpu_state, dev_state;
  c10::optional<torch::Device> device;  // a non-CPU device whose generator is rewound too
};

torch::Tensor get_state(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}
void set_state(at::Generator gen, const torch::Tensor& s) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(s);
}
at::Generator cpu_gen() { return at::detail::getDefaultCPUGenerator(); }

// Every leaf that requires grad and feeds the recomputed output must be one we differentiate:
// any other (a tensor the function captured instead of taking it as an input) would silently
// get no gradient.
void check_leaves(const torch::Tensor& y, const std::vector<torch::Tensor>& wrt) {
  std::unordered_set<const c10::TensorImpl*> allowed;
  for (auto& t : wrt) allowed.insert(t.unsafeGetTensorImpl());
  std::unordered_set<const torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> stack = {y.grad_fn().get()};
  while (!stack.empty()) {
    auto* n = stack.back();
    stack.pop_back();
    if (!n || !seen.insert(n).second) continue;
    if (auto* acc = dynamic_cast<torch::autograd::AccumulateGrad*>(n)) {
      PEFT_CHECK(allowed.count(acc->variable.unsafeGetTensorImpl()),
                 "gradient checkpointing: a trainable tensor of shape ", acc->variable.sizes(),
                 " reaches a checkpointed block other than through its inputs or the block's own parameters, "
                 "so its gradient would be lost; train without gradient_checkpointing");
      continue;
    }
    for (auto& e : n->next_edges())
      if (e.function) stack.push_back(e.function.get());
  }
}

struct CheckpointFn : torch::autograd::Function<CheckpointFn> {
  static torch::Tensor forward(AutogradContext* ctx, at::TensorList flat, c10::intrusive_ptr<Segment> seg) {
    // Function::apply runs this with grad mode off: no graph, nothing kept but the inputs.
    seg->cpu_state = get_state(cpu_gen());
    if (seg->device) seg->dev_state = get_state(at::globalContext().defaultGenerator(*seg->device));
    std::vector<torch::Tensor> inputs(seg->n_inputs);
    for (size_t k = 0; k < seg->index.size(); ++k) inputs[seg->index[k]] = flat[k];
    auto y = seg->fn(inputs, false);
    ctx->save_for_backward(variable_list(flat.begin(), flat.begin() + seg->index.size()));
    ctx->saved_data["segment"] = c10::IValue::make_capsule(seg);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto seg = c10::static_intrusive_pointer_cast<Segment>(ctx->saved_data["segment"].toCapsule());
    auto saved = ctx->get_saved_variables();
    const size_t n_in = seg->index.size(), n_all = n_in + seg->params.size();
    variable_list grads(n_all + 1);  // + the Segment argument
    if (!grad_out[0].defined()) return grads;
    std::vector<torch::Tensor> inputs(seg->n_inputs), wrt;
    std::vector<size_t> wrt_at;  // node input index of each wrt entry
    for (size_t k = 0; k < n_in; ++k) {
      auto d = saved[k].detach();
      if (seg->needs_grad[k]) {
        d.requires_grad_(true);
        wrt.push_back(d);
        wrt_at.push_back(k);
      }
      inputs[seg->index[k]] = d;
    }
    for (size_t j = 0; j < seg->params.size(); ++j) {
      wrt.push_back(seg->params[j]);
      wrt_at.push_back(n_in + j);
    }
    // Rewind the generators to the forward's states for the recompute, then put them back.
    auto cpu_now = get_state(cpu_gen());
    torch::Tensor dev_now;
    if (seg->device) dev_now = get_state(at::globalContext().defaultGenerator(*seg->device));
    set_state(cpu_gen(), seg->cpu_state);
    if (seg->device) set_state(at::globalContext().defaultGenerator(*seg->device), seg->dev_state);
    torch::Tensor y;
    try {
      torch::AutoGradMode on(true);
      y = seg->fn(inputs, true);
    } catch (...) {
      set_state(cpu_gen(), cpu_now);
      if (seg->device) set_state(at::globalContext().defaultGenerator(*seg->device), dev_now);
      throw;
    }
    set_state(cpu_gen(), cpu_now);
    if (seg->device) set_state(at::globalContext().defaultGenerator(*seg->device), dev_now);
    if (!y.requires_grad() || wrt.empty()) return grads;
    check_leaves(y, wrt);
    auto g = torch::autograd::grad({y}, wrt, {grad_out[0]}, /*retain_graph=*/false, /*create_graph=*/false,
                                   /*allow_unused=*/true);
    for (size_t i = 0; i < wrt.size(); ++i) grads[wrt_at[i]] = g[i];
    return grads;
  }
};

}  // namespace

namespace {
struct MemoryTable {
  std::mutex mu;
  // Keyed by address; the weak pointer tells a live model from a dead one at the same address.
  std::unordered_map<const void*, std::pair<std::weak_ptr<const torch::nn::Module>, MemoryOptions>> byModel;
};
MemoryTable& memory_table() {
  static MemoryTable t;
  return t;
}
}  // namespace

void set_memory_options(const torch::nn::Module& model, const MemoryOptions& options) {
  PEFT_CHECK(options.loss_chunk_tokens >= 0, "loss_chunk_tokens must be >= 0 (0 = off), got ", options.loss_chunk_tokens);
  std::shared_ptr<const torch::nn::Module> owner;
  try {
    owner = model.shared_from_this();
  } catch (const std::bad_weak_ptr&) {
    fail("set_memory_options: the model must be owned by a std::shared_ptr");
  }
  auto& t = memory_table();
  std::lock_guard<std::mutex> lock(t.mu);
  for (auto it = t.byModel.begin(); it != t.byModel.end();)  // forget dead models
    it = it->second.first.expired() ? t.byModel.erase(it) : std::next(it);
  t.byModel[&model] = {owner, options};
}

MemoryOptions memory_options(const torch::nn::Module& model) {
  auto& t = memory_table();
  std::lock_guard<std::mutex> lock(t.mu);
  auto it = t.byModel.find(&model);
  if (it == t.byModel.end()) return {};
  auto live = it->second.first.lock();
  if (!live || live.get() != &model) return {};
  return it->second.second;
}

torch::Tensor checkpointed(const SegmentFn& fn, const std::vector<torch::Tensor>& inputs,
                           const std::vector<torch::Tensor>& params) {
  auto seg = c10::make_intrusive<Segment>();
  seg->fn = fn;
  seg->n_inputs = inputs.size();
  std::vector<torch::Tensor> flat;
  bool any = false;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined()) continue;
    seg->index.push_back(i);
    seg->needs_grad.push_back(inputs[i].requires_grad());
    any = any || inputs[i].requires_grad();
    flat.push_back(inputs[i]);
    if (!seg->device && !inputs[i].device().is_cpu()) seg->device = inputs[i].device();
  }
  std::unordered_set<const c10::TensorImpl*> have;
  for (auto& p : params) {
    if (!p.requires_grad() || !have.insert(p.unsafeGetTensorImpl()).second) continue;
    seg->params.push_back(p);
    seg->needs_grad.push_back(true);
    flat.push_back(p);
    any = true;
  }
  if (!any) return fn(inputs, false);  // nothing to differentiate: nothing to keep either
  return CheckpointFn::apply(at::TensorList(flat), seg);
}

bool checkpoint_active(bool on, const torch::nn::Module& m) {
  return on && m.is_training() && torch::GradMode::is_enabled();
}

torch::Tensor run_block(bool on, const torch::nn::Module& block, const SegmentFn& fn,
                        const std::vector<torch::Tensor>& inputs) {
  if (!checkpoint_active(on, block)) return fn(inputs, false);
  std::vector<torch::Tensor> params;
  for (auto& p : block.parameters(/*recurse=*/true))
    if (p.requires_grad()) params.push_back(p);
  return checkpointed(fn, inputs, params);
}

torch::Tensor run_cached_block(bool on, const torch::nn::Module& block, const CachedBlockFn& fn,
                               std::vector<torch::Tensor> inputs, const std::vector<torch::Tensor*>& caches) {
  const size_t n = inputs.size();
  for (auto* c : caches) inputs.push_back(c ? *c : torch::Tensor());
  return run_block(
      on, block,
      [fn, caches, n](const std::vector<torch::Tensor>& t, bool recompute) {
        std::vector<torch::Tensor> args(t.begin(), t.begin() + n), kv(t.begin() + n, t.end());
        std::vector<torch::Tensor*> slots(caches.size());
        for (size_t j = 0; j < caches.size(); ++j) slots[j] = caches[j] ? &kv[j] : nullptr;
        auto y = fn(args, slots);
        if (!recompute)
          for (size_t j = 0; j < caches.size(); ++j)
            if (caches[j]) *caches[j] = kv[j];
        return y;
      },
      inputs);
}

void refuse_checkpointed_prefix_gate(bool on, const torch::nn::Module& m, bool gated) {
  PEFT_CHECK(!checkpoint_active(on, m) || !gated,
             "gradient checkpointing: a gated prefix (UniPELT's prefix gate) is not supported; train without "
             "gradient_checkpointing");
}

}  // namespace peft
