// AdapterHub's Parallel block as a repeated mixed-adapter batch (include/peft/composition.h).
#include "peft/composition.h"

#include <torch/torch.h>

#include "peft/error.h"

namespace peft {

ModelOutput parallel_forward(PeftModel& pm, const ModelInput& in, const std::vector<std::string>& adapters) {
  PEFT_CHECK(!adapters.empty(), "parallel_forward: no adapters given");
  PEFT_CHECK(!in.cache && !in.encoder_hidden_states.defined(),
             "parallel_forward: one forward over a whole batch (no KV cache, no encoder states)");
  PEFT_CHECK(!in.prefix && !in.prefix_gate, "parallel_forward: inputs with an attention prefix are not supported");
  const auto& lead = in.input_ids.defined() ? in.input_ids : in.inputs_embeds;
  PEFT_CHECK(lead.defined(), "parallel_forward: input_ids or inputs_embeds required");
  const int64_t B = lead.size(0), n = static_cast<int64_t>(adapters.size());
  auto rep = [&](const torch::Tensor& t) {
    if (!t.defined() || (t.dim() >= 1 && t.size(0) == 1 && B != 1)) return t;  // undefined, or broadcast over rows
    PEFT_CHECK(t.dim() >= 1 && t.size(0) == B, "parallel_forward: an input has ", t.dim() ? t.size(0) : 0,
               " rows for a batch of ", B);
    std::vector<int64_t> r(t.dim(), 1);
    r[0] = n;
    return t.repeat(r);
  };
  ModelInput x = in;
  for (auto* t : {&x.input_ids, &x.inputs_embeds, &x.attention_mask, &x.token_type_ids, &x.position_ids,
                  &x.decoder_input_ids, &x.decoder_attention_mask, &x.decoder_inputs_embeds, &x.labels})
    *t = rep(*t);
  std::vector<std::string> rows;
  for (auto& a : adapters) rows.insert(rows.end(), B, a);
  return pm.forward(x, rows);
}

}  // namespace peft
