// Soft prompts in mixed-adapter batches (row_prompts.h).
//
// Layout of row i (P_kv, P_e: the longest key/value prefix and the longest virtual-token prompt
// in the batch; n_i its own, of one kind):
//   keys:    [ pad (P_kv - n_kv_i) | prefix (n_kv_i) ]  in the cache, before everything
//   input:   [ pad (P_e - n_e_i) | virtual tokens (n_e_i) | the caller's tokens ]
//   mask:    0 over the pads, 1 over the prompt, then the caller's mask (ones when it gave none)
//   positions: virtual token j at n_kv_i + j; the caller's token t at n_i + pos_t, pos_t the
//              caller's position ids, default past + t (past: real tokens already cached).
#include "tuners/row_prompts.h"

#include <algorithm>

#include "peft/error.h"

namespace peft {

void apply_row_prompts(PretrainedModel& model, ModelInput& in, KVCache& storage,
                       const std::vector<const InputAdapter::RowPrompt*>& per_row) {
  PEFT_CHECK(!model.is_encoder_decoder() && model.task() == TaskType::CausalLM,
             "mixed-adapter batch: soft prompts (virtual tokens, prefixes) share a batch on decoder-only causal "
             "LMs only; run this model's prompt adapters one at a time");
  const int64_t B = static_cast<int64_t>(per_row.size());
  std::vector<int64_t> ne(B, 0), nkv(B, 0);
  int64_t Pe = 0, Pkv = 0;
  const InputAdapter::RowPrompt* kv_ref = nullptr;
  for (int64_t i = 0; i < B; ++i) {
    auto* p = per_row[i];
    if (!p) continue;
    if (p->embeds.defined()) {
      ne[i] = p->embeds.size(0);
    } else {
      nkv[i] = p->length();
      kv_ref = p;
    }
    Pe = std::max(Pe, ne[i]);
    Pkv = std::max(Pkv, nkv[i]);
  }
  torch::Tensor ref = in.inputs_embeds.defined() ? in.inputs_embeds : in.input_ids;
  PEFT_CHECK(ref.defined() && ref.size(0) == B, "mixed-adapter batch: the input has ", ref.defined() ? ref.size(0) : 0,
             " rows, the prompts ", B);
  const int64_t T = ref.size(1);
  const auto dev = ref.device();
  const int64_t cached = in.cache ? in.cache->length() : 0;
  const bool first = cached == 0;
  PEFT_CHECK(first || cached >= Pkv + Pe, "mixed-adapter batch: the KV cache holds ", cached,
             " positions, fewer than the batch's prompts (", Pkv + Pe, "); continue a cache only with the rows it was "
             "started with");
  const int64_t past_real = first ? 0 : cached - Pkv - Pe;

  // The mask over the prompt columns: [B, Pkv + Pe], 1 over each row's own prompt.
  auto lead = torch::zeros({B, Pkv + Pe}, torch::kLong);
  for (int64_t i = 0; i < B; ++i) {
    if (nkv[i]) lead[i].slice(0, Pkv - nkv[i], Pkv).fill_(1);
    if (ne[i]) lead[i].slice(0, Pkv + Pe - ne[i], Pkv + Pe).fill_(1);
  }
  lead = lead.to(dev);
  auto caller_mask = in.attention_mask.defined() ? in.attention_mask.to(torch::kLong)
                                                 : torch::ones({B, past_real + T}, torch::dtype(torch::kLong).device(dev));
  PEFT_CHECK(caller_mask.size(1) == past_real + T, "mixed-adapter batch: attention_mask has ", caller_mask.size(1),
             " columns, expected ", past_real + T, " (cached tokens and the input, without the prompts)");

  // Positions of the caller's tokens, shifted by each row's own prompt length.
  auto own = torch::tensor(std::vector<int64_t>(B, 0), torch::kLong);
  for (int64_t i = 0; i < B; ++i) own[i] = ne[i] + nkv[i];
  own = own.to(dev).unsqueeze(1);
  auto caller_pos = in.position_ids.defined()
                        ? in.position_ids.to(torch::kLong).expand({B, T})
                        : (torch::arange(past_real, past_real + T, torch::dtype(torch::kLong).device(dev))).unsqueeze(0).expand({B, T});
  auto pos = caller_pos + own;

  if (first && Pkv > 0) {  // the key/value prefix, one [B, heads, Pkv, hd] per layer
    KVCache* cache = in.cache ? in.cache : &storage;
    const int64_t L = static_cast<int64_t>(kv_ref->k.size());
    const int64_t heads = kv_ref->k[0].size(0), hd = kv_ref->k[0].size(2);
    cache->k.assign(L, torch::Tensor());
    cache->v.assign(L, torch::Tensor());
    auto opts = kv_ref->k[0].options();
    for (int64_t l = 0; l < L; ++l) {
      std::vector<torch::Tensor> ks, vs;
      for (int64_t i = 0; i < B; ++i) {
        auto pad = torch::zeros({heads, Pkv - nkv[i], hd}, opts);
        if (nkv[i]) {
          ks.push_back(torch::cat({pad, per_row[i]->k[l].to(opts)}, 1));
          vs.push_back(torch::cat({pad, per_row[i]->v[l].to(opts)}, 1));
        } else {
          ks.push_back(torch::zeros({heads, Pkv, hd}, opts));
          vs.push_back(ks.back());
        }
      }
      cache->k[l] = torch::stack(ks).to(dev);
      cache->v[l] = torch::stack(vs).to(dev);
    }
    in.cache = cache;
  }
  if (first && Pe > 0) {  // the virtual tokens, in front of the token embeddings
    torch::Tensor x = in.inputs_embeds.defined() ? in.inputs_embeds : model.embed_tokens(in.input_ids);
    std::vector<torch::Tensor> rows;
    for (int64_t i = 0; i < B; ++i) {
      auto pad = torch::zeros({Pe - ne[i], x.size(2)}, x.options());
      rows.push_back(ne[i] ? torch::cat({pad, per_row[i]->embeds.to(x.device(), x.scalar_type())}, 0)
                           : torch::zeros({Pe, x.size(2)}, x.options()));
    }
    in.inputs_embeds = torch::cat({torch::stack(rows), x}, 1);
    in.input_ids = torch::Tensor();
    // Virtual token j of row i at n_kv_i + j (its pads at 0: masked).
    auto j = torch::arange(Pe, torch::dtype(torch::kLong).device(dev)).unsqueeze(0) -
             (Pe - torch::tensor(ne, torch::kLong).to(dev).unsqueeze(1));
    auto vpos = (j + torch::tensor(nkv, torch::kLong).to(dev).unsqueeze(1)).clamp_min(0);
    pos = torch::cat({vpos, pos}, 1);
    if (in.token_type_ids.defined())
      in.token_type_ids = torch::cat({torch::zeros({B, Pe}, in.token_type_ids.options()), in.token_type_ids}, 1);
    if (in.labels.defined())
      in.labels = torch::cat({torch::full({B, Pe}, -100, in.labels.options()), in.labels}, 1);
  }
  // Caller's pad positions may have any value; keep them valid indices.
  in.position_ids = pos.clamp_min(0);
  in.attention_mask = torch::cat({lead, caller_mask}, 1).to(in.attention_mask.defined() ? in.attention_mask.scalar_type()
                                                                                         : torch::kLong);
}

}  // namespace peft
