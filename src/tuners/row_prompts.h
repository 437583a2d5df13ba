// Soft prompts in mixed-adapter batches (issue 15): rows whose adapter puts virtual tokens in
// front of the input (prompt tuning, P-tuning) or a key/value prefix before it (prefix tuning)
// share one batch with rows of other adapters or none. Each row's prompt is placed right before
// its tokens and padded on the left to the longest (the pads are masked), and each row's
// positions are those it has alone: virtual tokens at 0 .. n-1, real tokens from n on
// (n = the row's own prompt length) — peft's convention for one prompt adapter, applied row by
// row. Decoder-only causal LMs (a row's pads must not shift its positions).
#pragma once
#include <vector>

#include "peft/tuner.h"

namespace peft {

/// `per_row[i]`: the prompt of row i, or nullptr for a row without one. Fills `in` for the model:
/// on the first forward (empty cache) inputs_embeds with the virtual tokens, the prefix written
/// into `in.cache` (or `storage` when the caller gave none), labels with -100 over the virtual
/// tokens; on every forward the attention mask over the prompt columns and the position ids.
void apply_row_prompts(PretrainedModel& model, ModelInput& in, KVCache& storage,
                       const std::vector<const InputAdapter::RowPrompt*>& per_row);

}  // namespace peft
