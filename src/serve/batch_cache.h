// Continuous batching keeps one KV cache per sequence (include/peft/model.h: per layer k, v
// [1, kv_heads, len, head_dim]). A decode step stacks the active sequences' caches into one
// batch cache, left-padded to the longest (the padding masked out by attention_mask), feeds each
// row its own position, runs one forward, and splits the extended cache back.
//
//   auto step = serve::stack_caches({&a.cache, &b.cache});   // step.cache, step.attention_mask, step.position_ids
//   ... in.cache = &step.cache; forward ...
//   serve::split_caches(step, {&a.cache, &b.cache});          // each extended by one token
#pragma once
#include <torch/types.h>

#include <vector>

#include "peft/model.h"

namespace peft::serve {

struct StackedCache {
  KVCache cache;                 // [B, kv_heads, maxlen, head_dim] per layer, row i left-padded
  torch::Tensor attention_mask;  // [B, maxlen + 1] int64: 0 on row i's padding, 1 elsewhere
  torch::Tensor position_ids;    // [B, 1] int64: row i's own length (its next position)
  std::vector<int64_t> lengths;  // each row's cached length before the step
  int64_t maxlen = 0;
};

/// Stacks the (non-empty, same-layout) caches for a step that appends one token per row.
StackedCache stack_caches(const std::vector<const KVCache*>& caches);
/// After the forward extended s.cache by one token: row i's cache becomes its own slice (the
/// padding dropped), length lengths[i] + 1.
void split_caches(const StackedCache& s, const std::vector<KVCache*>& caches);

}  // namespace peft::serve
