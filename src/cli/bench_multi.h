// `peft bench --suites multi`: many LoRA adapters over one base in one mixed-adapter batch (each
// row its own adapter, PeftModel::forward(in, row_adapters)) against the same batch on one merged
// adapter (the base's cost), for a forward over the prompt and for greedy decoding.
#pragma once
#include <nlohmann/json.hpp>
#include <ostream>

#include "cli/bench_step.h"

namespace peft::cli {

/// Rounds alternate mixed and merged; ratios are medians of per-round ratios. `adapters` rows.
nlohmann::json multi_suite(const BenchShape& shape, int64_t adapters, int64_t decode_tokens, int64_t repeats,
                           std::ostream& os);

}  // namespace peft::cli
