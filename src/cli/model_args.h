// Shared by subcommands that take --model (and later --adapter DIR[:SCALE], repeatable).
#pragma once
#include <functional>

#include "cli/command.h"
#include "peft/model.h"
#include "peft/precision.h"
#include "peft/tuner.h"

namespace peft::cli {

struct LoadedModel {
  ModelPtr model;
  PeftModelPtr peft;  // set when --adapter was given
  /// Forward through whatever wraps the base (adapters); the base model's forward if none.
  std::function<ModelOutput(const ModelInput&)> forward;
  /// Set for --dtype bfloat16|float16: Linear products in that dtype while the model is in use.
  std::shared_ptr<MatmulDtypeGuard> matmul_dtype;
  /// --row_adapters a,__base__,b: the adapter of each batch row (a mixed-adapter batch; empty:
  /// every row uses all adapters together). forward() applies it; batches must have this many rows.
  std::vector<std::string> row_adapters;
};

/// --model DIR, --dtype float32|bfloat16|float16|float64 (float16 refused on CPU; docs/PRECISION.md),
/// --adapter [NAME=]DIR[:SCALE] (repeatable; unnamed ones are adapter0, adapter1, ...),
/// --row_adapters NAME,__base__,... (a mixed-adapter batch: one name per row), --quantize nf4|fp4|int8 [--double_quant B] [--compute_dtype D]
/// (cli/quant_args.h).
LoadedModel load_model_from_args(Args& a);
/// Whether a config.json describes a regression head: problem_type "regression", or one label
/// (transformers infers regression from num_labels == 1).
bool regression_head(const nlohmann::json& config);
/// "DIR[:SCALE]" -> (DIR, SCALE); SCALE defaults to 1.
std::pair<std::string, double> parse_adapter_arg(const std::string& arg);
/// "[NAME=]DIR[:SCALE]" -> NAME ("" when none: the text before '=' must be a plain name, no '/'),
/// and the rest.
std::pair<std::string, std::string> split_adapter_name(const std::string& arg);

}  // namespace peft::cli
