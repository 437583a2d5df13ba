#include "train/optimizer_reset.h"

#include <mutex>
#include <set>

#include "peft/tuner.h"

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

namespace {
int64_t second_run_start(const nlohmann::json& c) {
  int64_t start = -1;
  if (c.value("peft_type", "") == "LT_SFT" && c.contains("phase1_steps")) start = c["phase1_steps"].get<int64_t>();
  if (c.contains("components") && c["components"].is_array())
    for (auto& part : c["components"]) start = std::max(start, second_run_start(part));
  return start;
}
}  // namespace

int64_t second_run_start(const PeftModel& pm) {
  int64_t start = -1;
  for (auto& a : pm.active_adapters()) start = std::max(start, second_run_start(pm.adapter(a).config));
  return start;
}

}  // namespace peft
