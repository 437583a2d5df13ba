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

#include <algorithm>

#include "peft/error.h"
#include "peft/tuner.h"

namespace peft {
namespace {

class MamTuner : public Tuner {
 public:
  std::string peft_type() const override { return "MAM"; }
  // The parallel adapter's table, then the prefix's fields it lacks, at MAM's defaults (He et
  // al. 2022, sec. 4.6: a parallel FFN adapter scaled by 4 and 30 prefix positions). MAM's format
  // is ours: every field, the prefix's extension fields included, goes to adapter_config.json.
  std::vector<ConfigField> fields() const override {
    auto t = bottleneck()->fields();
    auto has = [&](const std::string& n) {
      return std::any_of(t.begin(), t.end(), [&](const ConfigField& f) { return f.name == n; });
    };
    for (auto& f : prefix()->fields())
      if (!has(f.name) && f.name != "prefix_gate") t.push_back(f);
    for (auto& f : t) {
      f.ours = false;
      if (f.name == "adapter_type") {
        f.default_value = "parallel";
        f.choices = nlohmann::json::array({"parallel"});
        f.help = "MAM uses a parallel adapter beside the FFN";
      } else if (f.name == "scaling") {
        f.default_value = 4.0;
      } else if (f.name == "num_virtual_tokens") {
        f.default_value = 30;
      } else if (f.name == "prefix_layout") {
        f.default_value = "paper";  // encoder-decoders: encoder, decoder and cross-attention prefixes (He et al.)
      }
    }
    return t;
  }
  void validate(const nlohmann::json& c) const override {
    prefix()->validate(c);  // the rules between fields; the merged table checked the fields
    bottleneck()->validate(c);
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
