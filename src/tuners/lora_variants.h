// LoRA's variants as objects (issue 18, as Python peft's LoraVariant): each variant is one class
// with the hooks it changes, instead of a flag tested in every method of the layer. An adapter
// has one initialisation (init_lora_weights) and any number of variants, chosen from its config
// by the two tables in lora_variants.cpp. Adding a variant: a class here, a row there, its config
// field in the LoRA table (src/tuners/lora.cpp) and a row of tests/tuners/method_matrix_test.cpp.
//
// Inits (LoraInit):     default (A Kaiming-uniform, B = 0), false (both random: tests),
//                       gaussian, PiSSA, OLoRA, LoftQ.
// Variants (LoraVariant): rsLoRA (the scale), DoRA (term, merge), LoRA-FA (A frozen), DyLoRA
//                       (a random rank per training forward), Delta-LoRA (a step that moves
//                       the base), gated LoRA (term; not mergeable).
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "peft/tuner.h"

namespace peft {

class LoraInit;
class LoraVariant;
class LoraLinear;

/// One adapter at one module: the numbers from its config (rank_pattern / alpha_pattern
/// applied), its initialisation and its variants.
struct LoraOptions {
  int64_t r = 8;
  double alpha = 8, scaling = 1, dropout = 0;
  double delta_lambda = 0;  // Delta-LoRA's λ and first step
  int64_t delta_start = 0;
  int64_t loftq_bits = 4, loftq_iter = 1;
  const LoraInit* init = nullptr;
  std::vector<const LoraVariant*> variants;

  /// The scale of rank `rank`: α / rank, or the variant's rule (rsLoRA: α / sqrt(rank)).
  double scale_for(int64_t rank) const;
  bool has(const std::string& variant) const;
};

/// A and B for a new adapter [r, in] / [out, r]; `base_changed`: the init moved part of the
/// base weight into them (W0 -= s B A), recorded so the adapter is saved as the equivalent
/// plain LoRA on the unmodified base.
struct LoraFactors {
  torch::Tensor A, B;
  bool base_changed = false;
};

class LoraInit {
 public:
  virtual ~LoraInit() = default;
  /// peft's init_lora_weights value ("pissa", ...; "default" for true, "false" for false).
  virtual std::string name() const = 0;
  /// An error when the init cannot run on a quantized base of type `quant_type`.
  virtual void check_quantized_base(const std::string& quant_type, bool loading) const {}
  /// The factors (loading: placeholders the file overwrites, unless the init is also what
  /// peft re-runs on load, as LoftQ's base). May rewrite `W` (the [out, in] base weight).
  virtual LoraFactors factors(Linear& lin, const LoraOptions& o, bool loading) const = 0;
};

/// What a variant's term sees: the input, the input after dropout, the factors and scale this
/// forward uses, and the plain term s · B A xd.
struct LoraTermInput {
  const torch::Tensor& x;
  const torch::Tensor& xd;
  const torch::Tensor& A;
  const torch::Tensor& B;
  double s;
};

class LoraVariant {
 public:
  virtual ~LoraVariant() = default;
  /// The name in messages and in the trainable-parameter report ("DoRA").
  virtual std::string name() const = 0;
  /// The scale of rank `rank` when the variant sets it (at most one variant of an adapter does).
  virtual std::optional<double> scale(double alpha, int64_t rank) const { return std::nullopt; }
  /// True when it needs the float base weight (normalises or updates it): refused on a quantized base.
  virtual bool needs_float_base() const { return false; }
  /// True when A stays at its init and only B trains.
  virtual bool freezes_A() const { return false; }
  /// After lora_A / lora_B are registered (init values A, B): the variant's own tensors and state.
  virtual void added(LoraLinear& l, const std::string& a, const LoraOptions& o, const torch::Tensor& A,
                     const torch::Tensor& B) const {}
  /// Training forwards only: the factors and scale this forward uses (DyLoRA's random rank).
  virtual void sample(const LoraOptions& o, torch::Tensor& A, torch::Tensor& B, double& s) const {}
  /// The adapter's term from the plain one.
  virtual torch::Tensor term(LoraLinear& l, const std::string& a, const LoraTermInput& in, torch::Tensor lora) const {
    return lora;
  }
  /// Whether the rows of a mixed batch may use the gathered (Punica) product of plain factors.
  virtual bool gatherable(bool training) const { return true; }
  virtual bool mergeable(const LoraLinear& l) const { return true; }
  /// Folds the adapter with update `d` into `W` and returns true, or false for the plain W += d.
  virtual bool merge(LoraLinear& l, const std::string& a, torch::Tensor& W, const torch::Tensor& d) const { return false; }
  virtual bool unmerge(LoraLinear& l, const std::string& a, torch::Tensor& W, const torch::Tensor& d) const { return false; }
  /// After each optimizer step (not while merged).
  virtual void after_step(LoraLinear& l, const std::string& a, const LoraOptions& o, int64_t step) const {}
};

/// The init a full LoRA config selects (init_lora_weights), and its variants in a fixed order
/// (rsLoRA, DoRA, LoRA-FA, DyLoRA, Delta-LoRA, gate).
const LoraInit& lora_init_of(const nlohmann::json& cfg);
std::vector<const LoraVariant*> lora_variants_of(const nlohmann::json& cfg);

}  // namespace peft
