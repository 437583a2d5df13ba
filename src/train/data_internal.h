// Shared by the data sources (src/train/data_*.cpp): the bad-row policy in one place.
#pragma once
#include <string>

#include "peft/data.h"

namespace peft::data_detail {

/// Applies BadRowPolicy: add() throws "WHERE: reason" under Fail, else counts it in stats.
class BadRows {
 public:
  BadRows(BadRowPolicy p, DataStats* stats) : policy_(p), stats_(stats) {}
  void add(const std::string& where, const std::string& reason);
  /// One stderr warning when rows of `file` were skipped.
  void warn(const std::string& file) const;

 private:
  BadRowPolicy policy_;
  DataStats* stats_;
};

/// splitmix64: a small platform-independent generator for shuffles and splits.
struct SplitMix64 {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, n) without modulo bias.
  uint64_t below(uint64_t n) {
    uint64_t limit = ~uint64_t(0) - (~uint64_t(0) % n);
    uint64_t x;
    do x = next(); while (x >= limit);
    return x % n;
  }
};

/// Fisher-Yates permutation of 0..n-1 from `seed`.
std::vector<size_t> permutation(size_t n, uint64_t seed);

}  // namespace peft::data_detail
