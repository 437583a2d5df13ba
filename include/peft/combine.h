// Adapter arithmetic: a new LoRA adapter from weighted combinations of LoRA adapters loaded on
// one PeftModel, with Python peft 0.13.2's conventions (LoraModel.add_weighted_adapter).
//
//   auto pm = std::make_shared<peft::PeftModel>(peft::load_model("base"));
//   pm->load_adapter("adapters/a", "a");
//   pm->load_adapter("adapters/b", "b");
//   peft::CombineOptions o;
//   o.combination_type = "ties"; o.density = 0.5; o.seed = 31337;   // seed: torch.manual_seed
//   peft::add_weighted_adapter(*pm, {"a", "b"}, {0.7, 0.3}, "ab", o);
//   pm->save_adapter("out/ab", "ab");                                // a plain LoRA folder
//
// Combination types (docs/COMBINE.md has the formulas): "svd", "linear", "cat", "ties",
// "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd", "magnitude_prune",
// "magnitude_prune_svd". Task arithmetic (Ilharco et al. 2023), TIES-merging (Yadav et al. 2023),
// DARE (Yu et al. 2024).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace peft {

class PeftModel;

/// The keyword arguments of peft's add_weighted_adapter, same names and defaults.
struct CombineOptions {
  std::string combination_type = "svd";
  /// Fraction of entries kept by the pruning types (ties*, dare*, magnitude_prune*); (0, 1],
  /// 1 keeps everything (no pruning, no random draws). Required by those types.
  std::optional<double> density;
  std::string majority_sign_method = "total";  // "total" | "frequency" (ties*, dare_ties*)
  std::optional<int64_t> svd_rank;             // *svd types: rank of the result (default: max rank)
  std::optional<double> svd_clamp;             // *svd types: clamp factors at this quantile of |entries|
  bool svd_full_matrices = true;               // torch.linalg.svd(full_matrices=)
  std::string svd_driver;                      // torch.linalg.svd(driver=): CUDA only; empty = default
  /// DARE's rescaling of the kept entries by 1/density (Yu et al. 2024, eq. 2). peft 0.13.2
  /// computes it and discards the result, so the default (false) reproduces peft's adapters.
  bool dare_rescale = false;
  /// Seeds LibTorch's default CPU generator right before combining, as torch.manual_seed(seed)
  /// before add_weighted_adapter (only the dare* types draw). Unset: the generator as it is.
  std::optional<uint64_t> seed;
};

/// One DARE mask drawn, in draw order.
struct CombineMask {
  std::string module;  // e.g. "model.layers.0.self_attn.q_proj"
  std::string tensor;  // "lora_A" | "lora_B" (factor types) | "delta" (svd types)
  std::string adapter;
  std::vector<int64_t> shape;
  int64_t nonzero = 0;
};

struct CombineResult {
  std::string combination_type;  // as applied: peft uses "linear" for a single adapter
  int64_t r = 0;                 // rank of the new adapter (lora_alpha = r: scaling 1)
  std::vector<std::string> modules;  // the modules it targets, in named_modules() order
  /// Random numbers peft's inject_adapter draws (and discards) for the new adapter's layers
  /// before the first mask; replayed so the masks are peft's.
  int64_t init_draws = 0;
  std::vector<CombineMask> masks;
};

/// Adds LoRA adapter `adapter_name` to `pm`, combined from the LoRA adapters `adapters` with
/// `weights` (one each). The active adapters and every requires_grad flag stay as they were;
/// the new adapter is inactive and frozen (peft's _freeze_adapter). Refusals (peft's and ours)
/// throw peft::Error before anything changes: unknown names or types, a non-LoRA adapter,
/// unequal ranks for linear/ties/dare_*/magnitude_prune, mixed target_modules kinds, a missing
/// or out-of-range density, DoRA / gates / rank_pattern / modules_to_save / trainable biases.
CombineResult add_weighted_adapter(PeftModel& pm, const std::vector<std::string>& adapters,
                                   const std::vector<double>& weights, const std::string& adapter_name,
                                   const CombineOptions& opts = {});

/// The combination type names add_weighted_adapter accepts.
const std::vector<std::string>& combination_types();

}  // namespace peft
