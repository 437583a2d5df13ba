// Hybrid methods made of other registered methods (components), one adapter name for all.
//
// - MAM adapter (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
//   Learning", sec. 4.6, table 6): prefix tuning in every attention layer (their l = 30 virtual
//   tokens) plus a scaled parallel adapter at the FFN (s = 4). Components: PREFIX_TUNING and
//   BOTTLENECK (adapter_type "parallel"); the config is the union of their fields (peft_type
//   "MAM", peft_cpp_format_version 1), the file holds `prompt_embeddings` plus the adapter
//   tensors under base_model.model.<module>. Identity at init does not hold (the prefix is
//   random, as in the paper); the parallel adapter part starts at zero. On encoder-decoders the
//   prefix uses prefix tuning's "paper" layout (src/tuners/prompt.cpp): every attention site.
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/tuner.h"

namespace peft {
namespace {

class MamTuner : public Tuner {
 public:
  std::string peft_type() const override { return "MAM"; }
  nlohmann::json defaults() const override {
    auto d = bottleneck()->defaults();
    const auto pre = prefix()->defaults();  // a named copy: items() refers to it
    for (auto& kv : pre.items())
      if (!d.contains(kv.key())) d[kv.key()] = kv.value();
    d["peft_type"] = "MAM";
    d["adapter_type"] = "parallel";
    d["scaling"] = 4.0;
    d["num_virtual_tokens"] = 30;
    d["prefix_layout"] = "paper";  // encoder-decoders: encoder, decoder and cross-attention prefixes (He et al.)
    return d;
  }
  void validate(const nlohmann::json& c) const override {
    PEFT_CHECK(c["adapter_type"] == "parallel", "adapter config: MAM uses a parallel adapter (adapter_type \"parallel\")");
    prefix()->check(c);  // its field table, then its rules
    bottleneck()->check(c);
  }
  void add_global(PeftModel& pm, const std::string& name, const nlohmann::json& c) const override {
    prefix()->add_global(pm, name, c);
    bottleneck()->add_global(pm, name, c);
  }
  void inject(PeftModel& pm, const SlotRef& slot, const std::string& name, const nlohmann::json& c) const override {
    bottleneck()->inject(pm, slot, name, c);
  }

 private:
  static TunerPtr prefix() { return find_tuner("PREFIX_TUNING"); }
  static TunerPtr bottleneck() { return find_tuner("BOTTLENECK"); }
};

PEFT_REGISTER_TUNER(MamTuner);
PEFT_REGISTER_METHOD("mam", {{"peft_type", "MAM"}});

}  // namespace
}  // namespace peft
