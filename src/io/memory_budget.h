// Refusing absurd sizes before they are allocated (issue: resource limits). A config.json or
// adapter_config.json is a few hundred bytes that decide gigabytes of allocations: a hostile or
// mistyped one (hidden_size 10^6, r 2^30) must fail with an error naming the file, not thrash
// the machine or die to the OOM killer. While a MemoryBudget is alive on a thread, every CPU
// tensor allocation made by that thread counts against it (cumulatively: the construction
// phases it guards keep nearly everything they allocate), and the first one that would exceed
// it throws peft::Error before any memory is taken.
//
// The budgets are derived from what is on disk (load_model: 4 x the weight files + 1 GiB;
// load_adapter: 2 x the base model + 8 x the adapter file + 256 MiB), documented in
// docs/RELIABILITY.md, and PEFT_MAX_LOAD_BYTES=<bytes>|off overrides them.
#pragma once
#include <cstdint>
#include <string>

namespace peft {

class MemoryBudget {
 public:
  /// `bytes`: the cap; `what`: the file whose contents ask for the memory (for the error).
  MemoryBudget(uint64_t bytes, std::string what, std::string why);
  ~MemoryBudget();
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  /// The cap after PEFT_MAX_LOAD_BYTES: `derived` unless the variable sets a number (or "off":
  /// no cap). A malformed value is a peft::Error naming the variable.
  static uint64_t cap(uint64_t derived);
  uint64_t used() const { return used_; }

 private:
  friend struct BudgetAllocator;
  uint64_t limit_, used_ = 0;
  std::string what_, why_;
  MemoryBudget* outer_;
};

}  // namespace peft
