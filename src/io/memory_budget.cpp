#include "io/memory_budget.h"

#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "peft/error.h"

namespace peft {

namespace {
thread_local MemoryBudget* g_budget = nullptr;
}

// Wraps LibTorch's CPU allocator; outside a MemoryBudget it only forwards.
struct BudgetAllocator final : c10::Allocator {
  c10::Allocator* inner = nullptr;
  c10::DataPtr allocate(size_t n) const override {
    if (MemoryBudget* b = g_budget) {
      if (n > b->limit_ - b->used_) {
        MemoryBudget* saved = g_budget;
        g_budget = nullptr;  // building the message allocates nothing on the CPU allocator, but be safe
        std::string msg = b->what_ + ": " + b->why_ + " needs more than " + std::to_string(b->limit_ >> 20) +
                          " MiB (refused before allocating " + std::to_string(n >> 20) + " MiB more, " +
                          std::to_string(b->used_ >> 20) +
                          " MiB already taken); set PEFT_MAX_LOAD_BYTES=<bytes> or off to allow it";
        g_budget = saved;
        fail(msg);
      }
      b->used_ += n;
    }
    return inner->allocate(n);
  }
  c10::DeleterFnPtr raw_deleter() const override { return inner->raw_deleter(); }
  // LibTorch >= 2.3 declares this pure virtual; older versions do not have it.
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }
};

namespace {
BudgetAllocator& wrapper() {
  static BudgetAllocator* a = [] {
    auto* w = new BudgetAllocator();
    w->inner = c10::GetCPUAllocator();
    c10::SetCPUAllocator(w, /*priority=*/100);
    return w;
  }();
  return *a;
}
}  // namespace

MemoryBudget::MemoryBudget(uint64_t bytes, std::string what, std::string why)
    : limit_(bytes), what_(std::move(what)), why_(std::move(why)), outer_(g_budget) {
  wrapper();
  g_budget = this;
}

MemoryBudget::~MemoryBudget() {
  g_budget = outer_;
  if (outer_) outer_->used_ = std::min(outer_->limit_, outer_->used_ + used_);
}

uint64_t MemoryBudget::cap(uint64_t derived) {
  const char* v = std::getenv("PEFT_MAX_LOAD_BYTES");
  if (!v || !*v) return derived;
  if (std::strcmp(v, "off") == 0) return std::numeric_limits<uint64_t>::max();
  char* end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v, &end, 10);
  PEFT_CHECK(errno == 0 && end && *end == '\0' && v[0] != '-', "PEFT_MAX_LOAD_BYTES: expected a byte count or 'off', got '",
             v, "'");
  return n;
}

}  // namespace peft
