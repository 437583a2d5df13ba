#include "peft/module.h"

#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/model.h"
#include "peft/precision.h"
#include "models/fused_ops.h"
#include "models/skip_init.h"

namespace peft {

namespace {
thread_local bool g_skip_linear_init = false;
}
SkipLinearInit::SkipLinearInit() : prev_(g_skip_linear_init) { g_skip_linear_init = true; }
SkipLinearInit::~SkipLinearInit() { g_skip_linear_init = prev_; }

void init_linear_weight(Linear& l) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(l.in_features));
  torch::NoGradGuard ng;
  l.weight.uniform_(-bound, bound);
}

Linear::Linear(int64_t in, int64_t out, bool has_bias, bool conv1d_)
    : in_features(in), out_features(out), conv1d(conv1d_) {
  weight = register_parameter("weight", conv1d ? torch::empty({in, out}) : torch::empty({out, in}));
  // Same default init as nn.Linear; checkpoints overwrite it (skipped: models/skip_init.h).
  if (!g_skip_linear_init) init_linear_weight(*this);
  if (has_bias) bias = register_parameter("bias", torch::zeros({out}));
}

torch::Tensor Linear::forward(const torch::Tensor& x) {
  // A half-precision weight, or an input / bias of another dtype (a float32 activation on a
  // bfloat16 base, a trainable float32 bias): the product in the compute dtype, the result in
  // x's dtype (peft/precision.h). Same-dtype float32 / float64 keeps the plain path below.
  const auto cd = linear_compute_dtype(weight.scalar_type());
  if (cd != weight.scalar_type() || x.scalar_type() != cd || (bias.defined() && bias.scalar_type() != cd))
    return frozen_linear(x, weight, bias, conv1d, cd);
  if (conv1d) {
    auto y = torch::matmul(x, weight);
    return bias.defined() ? y + bias : y;
  }
  return torch::nn::functional::linear(x, weight, bias.defined() ? bias : torch::Tensor());
}

LayerPtr Layer::clone_layer() const {
  fail("module of type ", name(), " cannot be copied (modules_to_save supports Linear, LayerNorm, RMSNorm, "
       "activations and the heads/MLPs built from them)");
}

LayerPtr clone_slots_into(const Layer& src, LayerPtr fresh) {
  TORCH_INTERNAL_ASSERT(fresh, "clone_slots_into: no layer");
  for (auto& name : src.slot_names()) fresh->replace_slot(name, src.slot(name)->clone_layer());
  torch::NoGradGuard ng;
  auto copy_direct = [](const auto& from, auto to) {
    for (auto& kv : from) {
      auto* t = to.find(kv.key());
      PEFT_CHECK(t && t->sizes() == kv.value().sizes(), "clone: tensor '", kv.key(), "' differs in the copy");
      t->copy_(kv.value());
    }
  };
  copy_direct(src.named_parameters(/*recurse=*/false), fresh->named_parameters(false));
  copy_direct(src.named_buffers(/*recurse=*/false), fresh->named_buffers(false));
  return fresh;
}

LayerPtr Linear::clone_layer() const {
  auto c = std::make_shared<Linear>(in_features, out_features, bias.defined(), conv1d);
  torch::NoGradGuard ng;
  c->weight.copy_(weight);
  if (bias.defined()) c->bias.copy_(bias);
  return c;
}

LayerPtr RMSNorm::clone_layer() const {
  auto c = std::make_shared<RMSNorm>(weight.size(0), eps);
  torch::NoGradGuard ng;
  c->weight.copy_(weight);
  return c;
}

LayerPtr LayerNorm::clone_layer() const {
  auto c = std::make_shared<LayerNorm>(dim, eps);
  torch::NoGradGuard ng;
  c->weight.copy_(weight);
  c->bias.copy_(bias);
  return c;
}

void Module::register_slot(const std::string& name, LayerPtr& member, LayerPtr value) {
  member = register_module(name, std::move(value));
  slots_[name] = &member;
}

LayerPtr Module::replace_slot(const std::string& name, LayerPtr value) {
  auto it = slots_.find(name);
  TORCH_INTERNAL_ASSERT(it != slots_.end(), "no slot named ", name);
  LayerPtr old = *it->second;
  replace_module(name, value);
  *it->second = std::move(value);
  return old;
}

LayerPtr Module::slot(const std::string& name) const {
  auto it = slots_.find(name);
  TORCH_INTERNAL_ASSERT(it != slots_.end(), "no slot named ", name);
  return *it->second;
}

std::vector<std::string> Module::slot_names() const {
  std::vector<std::string> out;
  for (auto& kv : slots_) out.push_back(kv.first);
  return out;
}

std::vector<SlotRef> find_slots(torch::nn::Module& root, const std::string& prefix) {
  std::vector<SlotRef> out;
  for (auto& item : root.named_modules(prefix, /*include_self=*/true)) {
    auto* m = dynamic_cast<Module*>(item.value().get());
    if (!m) continue;
    for (auto& name : m->slot_names())
      out.push_back({item.key().empty() ? name : item.key() + "." + name, m, name});
  }
  return out;
}

RMSNorm::RMSNorm(int64_t dim, double eps_) : eps(eps_) { weight = register_parameter("weight", torch::ones({dim})); }

torch::Tensor RMSNorm::forward(const torch::Tensor& x) { return rms_norm(x, weight, eps); }  // models/fused_ops.h

LayerNorm::LayerNorm(int64_t dim_, double eps_) : eps(eps_), dim(dim_) {
  weight = register_parameter("weight", torch::ones({dim}));
  bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor LayerNorm::forward(const torch::Tensor& x) {
  if (weight.scalar_type() != x.scalar_type())  // a bfloat16 base's norm on a float32 activation
    return torch::layer_norm(x, {dim}, weight.to(x.scalar_type()), bias.to(x.scalar_type()), eps);
  return torch::layer_norm(x, {dim}, weight, bias, eps);
}

// transformers 4.37's ACT2FN, every entry.
static const char* kActivations[] = {"silu",  "swish",   "gelu",    "gelu_new",   "gelu_pytorch_tanh", "gelu_fast",
                                     "relu",  "tanh",    "quick_gelu", "gelu_10", "gelu_python",       "gelu_accurate",
                                     "relu2", "relu6",   "sigmoid", "leaky_relu", "linear",            "mish",
                                     "laplace"};

void check_activation(const std::string& name) {
  for (auto* a : kActivations)
    if (name == a) return;
  std::string known;
  for (auto* a : kActivations) known += std::string(" ") + a;
  fail("unsupported activation '", name, "' (supported:", known, ")");
}

torch::Tensor activation(const std::string& name, const torch::Tensor& x) {
  if (name == "silu" || name == "swish") return torch::silu(x);
  if (name == "gelu" || name == "gelu_python") return torch::gelu(x);  // x Phi(x), erf form
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast" || name == "gelu_accurate") {
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written out as transformers' NewGELUActivation
    // (gelu_fast / gelu_accurate are the same tanh approximation in other arithmetic forms).
    return 0.5 * x * (1.0 + torch::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * torch::pow(x, 3.0))));
  }
  if (name == "relu") return torch::relu(x);
  if (name == "tanh") return torch::tanh(x);
  if (name == "quick_gelu") return x * torch::sigmoid(1.702 * x);
  if (name == "gelu_10") return torch::clamp(torch::gelu(x), -10, 10);
  if (name == "relu2") return torch::relu(x).pow(2);  // squared ReLU (So et al. 2021)
  if (name == "relu6") return torch::clamp(x, 0, 6);
  if (name == "sigmoid") return torch::sigmoid(x);
  if (name == "leaky_relu") return torch::leaky_relu(x, 0.01);  // nn.LeakyReLU's default slope
  if (name == "linear") return x;
  if (name == "mish") return x * torch::tanh(torch::softplus(x));
  if (name == "laplace") {  // transformers' LaplaceActivation: mu = 0.707107, sigma = 0.282095
    return 0.5 * (1.0 + torch::erf((x - 0.707107) / (0.282095 * std::sqrt(2.0))));
  }
  check_activation(name);
  return x;
}

Activation::Activation(std::string n) : name(std::move(n)) { check_activation(name); }

}  // namespace peft
