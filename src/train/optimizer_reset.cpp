#include "train/optimizer_reset.h"

#include <mutex>
#include <set>

#include "peft/tuner.h"
#include "tuners/config_parts.h"

namespace peft {
namespace {
std::mutex mu;
std::set<const PeftModel*>& pending() {
  static std::set<const PeftModel*> p;
  return p;
}
}  // namespace

void request_optimizer_reset(const PeftModel& pm) {
  std::lock_guard<std::mutex> lock(mu);
  pending().insert(&pm);
}

bool take_optimizer_reset(const PeftModel& pm) {
  std::lock_guard<std::mutex> lock(mu);
  return pending().erase(&pm) > 0;
}

int64_t second_run_start(const PeftModel& pm) {
  int64_t start = -1;
  for (auto& a : pm.active_adapters())
    for_each_config_part(pm.adapter(a).config, [&](const nlohmann::json& c) {
      if (c.value("peft_type", "") == "LT_SFT" && c.contains("phase1_steps"))
        start = std::max(start, c["phase1_steps"].get<int64_t>());
    });
  return start;
}

}  // namespace peft
