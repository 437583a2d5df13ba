#include "train/optimizer_reset.h"

#include <mutex>
#include <set>

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

}  // namespace peft
