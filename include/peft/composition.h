// AdapterHub's composition blocks through the library (docs/MULTI_ADAPTER.md). Stack is
// set_adapter({"lang", "task"}); BatchSplit is a mixed-adapter batch (PeftModel::forward with
// row_adapters); Average and Fuse are adapters of their own (peft_type ADAPTER_AVERAGE /
// ADAPTER_FUSION over bottleneck adapters, src/tuners/composition.cpp); Parallel is this:
//
//   auto out = peft::parallel_forward(*pm, in, {"sst2", "mnli"});  // logits [2B, ...]: sst2 rows, then mnli
#pragma once
#include <string>
#include <vector>

#include "peft/tuner.h"

namespace peft {

/// AdapterHub's Parallel(a, b, ...) (Rücklé et al. 2021, AdapterDrop sec. 4): the same batch
/// through each adapter side by side in ONE forward: the batch is repeated once per adapter and
/// runs as a mixed-adapter batch, so the output has adapters.size() * B rows, adapter-major
/// (rows [i*B, (i+1)*B) are adapter i's). Labels are repeated too: the loss is the mean over
/// every adapter's rows. Any adapter a mixed-adapter batch takes (including "__base__"). Errors
/// for an empty list, a KV cache or encoder states in `in` (one forward, not a decoding step).
ModelOutput parallel_forward(PeftModel& pm, const ModelInput& in, const std::vector<std::string>& adapters);

}  // namespace peft
