// Building blocks every model family is made of, and the one mechanism tuners use to reach
// into a model: *slots*.
//
// A slot is a child module that maps a tensor to a tensor (peft::Layer: a Linear, an MLP,
// a norm) and may be replaced by a wrapper. Models declare their replaceable children with
// register_slot(); a tuner wraps them through replace_slot(), which updates both the
// module registry (so named_parameters() shows `q_proj.base_layer.weight`, `q_proj.lora_A...`)
// and the parent's member pointer that forward() calls (LibTorch's replace_module alone
// leaves the member pointing at the old child).
//
//   struct AttnImpl : peft::Module {
//     peft::LayerPtr q_proj;
//     AttnImpl() { register_slot("q_proj", q_proj, std::make_shared<peft::Linear>(64, 64, false)); }
//   };
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>

namespace peft {

class Layer;
using LayerPtr = std::shared_ptr<Layer>;

/// Root of every model module that has replaceable children.
class Module : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;
  /// Registers `value` as child `name` and remembers `member` so replace_slot can rebind it.
  void register_slot(const std::string& name, LayerPtr& member, LayerPtr value);
  /// Replaces child `name` everywhere; returns the previous module.
  LayerPtr replace_slot(const std::string& name, LayerPtr value);
  LayerPtr slot(const std::string& name) const;
  /// Names of this module's slots (not recursive).
  std::vector<std::string> slot_names() const;

 private:
  std::map<std::string, LayerPtr*> slots_;
};

/// A tensor → tensor module: anything a tuner may wrap.
class Layer : public Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  torch::Tensor operator()(const torch::Tensor& x) { return forward(x); }
  /// A deep copy with its own parameters (modules_to_save). Layers that cannot be copied say so.
  virtual std::shared_ptr<Layer> clone_layer() const;
};

/// For composite layers' clone_layer() (a head made of Linears, an MLP): gives `fresh`, a newly
/// built layer of the same type and shapes, a copy of each of `src`'s slots (their own
/// clone_layer()) and of `src`'s direct parameters and buffers; returns `fresh`.
std::shared_ptr<Layer> clone_slots_into(const Layer& src, std::shared_ptr<Layer> fresh);

/// Linear layer with the Hugging Face parameter layout: `weight` [out, in] as nn.Linear, or
/// [in, out] as GPT-2's Conv1D (conv1d = true; y = x W + b), so state-dict keys and shapes
/// match the checkpoint byte for byte.
class Linear : public Layer {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias, bool conv1d = false);
  torch::Tensor forward(const torch::Tensor& x) override;
  /// The weight as [out, in] whatever the storage layout (a view, no copy).
  torch::Tensor weight_out_in() const { return conv1d ? weight.t() : weight; }
  std::shared_ptr<Layer> clone_layer() const override;
  int64_t in_features, out_features;
  bool conv1d;
  torch::Tensor weight, bias;  // bias undefined when absent
};

/// A slot reached from the root: the owning module and the child's name in it.
struct SlotRef {
  std::string path;  // full dotted name from the root, e.g. "model.layers.0.self_attn.q_proj"
  Module* parent;
  std::string name;  // child name in parent, e.g. "q_proj"
  LayerPtr get() const { return parent->slot(name); }
};
/// Every slot under `root`, in named_modules() order (prefix prepended to paths).
std::vector<SlotRef> find_slots(torch::nn::Module& root, const std::string& prefix = "");

/// RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * weight, computed in float32
/// as transformers' LlamaRMSNorm/T5LayerNorm do.
class RMSNorm : public Layer {
 public:
  RMSNorm(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x) override;
  std::shared_ptr<Layer> clone_layer() const override;
  torch::Tensor weight;
  double eps;
};

/// LayerNorm with `weight`/`bias` names as in nn.LayerNorm.
class LayerNorm : public Layer {
 public:
  LayerNorm(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x) override;
  std::shared_ptr<Layer> clone_layer() const override;
  torch::Tensor weight, bias;
  double eps;
  int64_t dim;
};

/// Activation by its Hugging Face name (hidden_act / activation_function): silu/swish, gelu
/// (erf), gelu_new / gelu_pytorch_tanh (tanh approximation), relu, tanh, gelu_fast, quick_gelu.
/// Unknown names throw peft::Error naming the value.
torch::Tensor activation(const std::string& name, const torch::Tensor& x);
void check_activation(const std::string& name);

/// An activation as a slot (so (IA)3 and friends can wrap the FFN's intermediate activation).
class Activation : public Layer {
 public:
  explicit Activation(std::string name);
  torch::Tensor forward(const torch::Tensor& x) override { return activation(name, x); }
  std::shared_ptr<Layer> clone_layer() const override { return std::make_shared<Activation>(name); }
  std::string name;
};

}  // namespace peft
