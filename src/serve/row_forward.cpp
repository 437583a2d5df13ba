#include "serve/row_forward.h"

#include <torch/torch.h>

#include <map>

#include "peft/error.h"

namespace peft::serve {
namespace {

torch::Tensor rows_of(const torch::Tensor& t, const torch::Tensor& idx) {
  return t.defined() ? t.index_select(0, idx) : t;
}

// Runs the group's rows with the group's adapter active (or none).
ModelOutput forward_as(PeftModel& pm, const ModelInput& in, const std::string& adapter) {
  if (adapter == kBaseAdapter) {
    pm.disable_adapters(true);
    auto out = pm.forward(in);
    pm.disable_adapters(false);
    return out;
  }
  if (pm.active_adapters() != std::vector<std::string>{adapter}) pm.set_adapter(adapter);
  return pm.forward(in);
}

}  // namespace

RowForward grouped_row_forward(std::shared_ptr<PeftModel> pm) {
  return [pm](const ModelInput& in, const std::vector<std::string>& row_adapters) {
    const int64_t B = static_cast<int64_t>(row_adapters.size());
    PEFT_CHECK(in.input_ids.defined() && in.input_ids.size(0) == B, "serve: ", B, " row adapters for a batch of ",
               in.input_ids.defined() ? in.input_ids.size(0) : 0, " rows");
    std::map<std::string, std::vector<int64_t>> groups;
    for (int64_t i = 0; i < B; ++i) groups[row_adapters[i]].push_back(i);
    if (groups.size() == 1) return forward_as(*pm, in, row_adapters[0]);
    ModelOutput out;
    KVCache merged;
    for (auto& [adapter, rows] : groups) {
      auto idx = torch::tensor(rows, torch::kLong);
      ModelInput g = in;
      g.input_ids = rows_of(in.input_ids, idx);
      g.attention_mask = rows_of(in.attention_mask, idx);
      g.position_ids = rows_of(in.position_ids, idx);
      KVCache gc;
      if (in.cache) {
        for (auto& t : in.cache->k) gc.k.push_back(rows_of(t, idx));
        for (auto& t : in.cache->v) gc.v.push_back(rows_of(t, idx));
        g.cache = &gc;
      }
      auto o = forward_as(*pm, g, adapter);
      if (!out.logits.defined()) {
        auto shape = o.logits.sizes().vec();
        shape[0] = B;
        out.logits = torch::empty(shape, o.logits.options());
      }
      out.logits.index_copy_(0, idx, o.logits);
      if (in.cache) {
        merged.k.resize(gc.k.size());
        merged.v.resize(gc.v.size());
        for (size_t l = 0; l < gc.k.size(); ++l) {
          if (!merged.k[l].defined()) {
            auto shape = gc.k[l].sizes().vec();
            shape[0] = B;
            merged.k[l] = torch::empty(shape, gc.k[l].options());
            shape = gc.v[l].sizes().vec();
            shape[0] = B;
            merged.v[l] = torch::empty(shape, gc.v[l].options());
          }
          merged.k[l].index_copy_(0, idx, gc.k[l]);
          merged.v[l].index_copy_(0, idx, gc.v[l]);
        }
      }
    }
    if (in.cache) {
      in.cache->k = std::move(merged.k);
      in.cache->v = std::move(merged.v);
    }
    return out;
  };
}

}  // namespace peft::serve
