#include "serve/batch_cache.h"

#include <torch/torch.h>

#include "peft/error.h"

namespace peft::serve {

StackedCache stack_caches(const std::vector<const KVCache*>& caches) {
  PEFT_CHECK(!caches.empty(), "serve: stack_caches needs at least one cache");
  StackedCache s;
  const size_t layers = caches[0]->k.size();
  for (auto* c : caches) {
    PEFT_CHECK(c->k.size() == layers && c->v.size() == layers && c->length() > 0,
               "serve: every sequence needs a prefilled cache with ", layers, " layers");
    PEFT_CHECK(c->cross_k.empty() && c->gate_scores.empty(),
               "serve: caches with cross-attention or prefix-gate scores cannot be batched");
    s.lengths.push_back(c->length());
    s.maxlen = std::max(s.maxlen, c->length());
  }
  const int64_t B = static_cast<int64_t>(caches.size());
  s.cache.k.resize(layers);
  s.cache.v.resize(layers);
  for (size_t l = 0; l < layers; ++l) {
    std::vector<torch::Tensor> ks, vs;
    for (size_t i = 0; i < caches.size(); ++i) {
      const int64_t pad = s.maxlen - s.lengths[i];
      // constant_pad_nd pads from the last dimension: {0, 0} head_dim, {pad, 0} the length.
      ks.push_back(pad ? torch::constant_pad_nd(caches[i]->k[l], {0, 0, pad, 0}) : caches[i]->k[l]);
      vs.push_back(pad ? torch::constant_pad_nd(caches[i]->v[l], {0, 0, pad, 0}) : caches[i]->v[l]);
    }
    s.cache.k[l] = torch::cat(ks, 0);
    s.cache.v[l] = torch::cat(vs, 0);
  }
  s.attention_mask = torch::ones({B, s.maxlen + 1}, torch::kLong);
  s.position_ids = torch::empty({B, 1}, torch::kLong);
  for (int64_t i = 0; i < B; ++i) {
    const int64_t pad = s.maxlen - s.lengths[i];
    if (pad) s.attention_mask[i].slice(0, 0, pad).zero_();
    s.position_ids[i][0] = s.lengths[i];
  }
  return s;
}

void split_caches(const StackedCache& s, const std::vector<KVCache*>& caches) {
  PEFT_CHECK(caches.size() == s.lengths.size(), "serve: split_caches got ", caches.size(), " caches for ",
             s.lengths.size(), " rows");
  for (size_t i = 0; i < caches.size(); ++i) {
    const int64_t pad = s.maxlen - s.lengths[i];
    auto& c = *caches[i];
    for (size_t l = 0; l < s.cache.k.size(); ++l) {
      PEFT_CHECK(s.cache.k[l].size(2) == s.maxlen + 1, "serve: the forward did not extend the batch cache by one token");
      c.k[l] = s.cache.k[l].slice(0, i, i + 1).slice(2, pad).contiguous();
      c.v[l] = s.cache.v[l].slice(0, i, i + 1).slice(2, pad).contiguous();
    }
  }
}

}  // namespace peft::serve
