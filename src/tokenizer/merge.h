// Greedy pair merging shared by the BPE implementations: repeatedly merge the adjacent pair
// with the best priority (lowest key; leftmost on ties) until no pair can be merged.
#pragma once
#include <cstdint>
#include <functional>
#include <queue>
#include <vector>

namespace peft::tok {

/// lookup(left, right, &key, &merged) returns true when the pair can merge, with its priority
/// key (lower first) and the merged id. Returns the ids after merging.
template <class Lookup>
std::vector<int64_t> merge_greedy(const std::vector<int64_t>& ids, Lookup&& lookup) {
  size_t n = ids.size();
  if (n < 2) return ids;
  std::vector<int64_t> sym(ids);
  std::vector<int> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = int(i) - 1;
    next[i] = (i + 1 < n) ? int(i + 1) : -1;
  }
  struct Cand {
    double key;
    int pos;
    int64_t left, right, merged;
  };
  auto worse = [](const Cand& a, const Cand& b) {
    if (a.key != b.key) return a.key > b.key;
    return a.pos > b.pos;
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> pq(worse);
  auto try_push = [&](int i) {
    if (i < 0 || next[i] < 0) return;
    double key;
    int64_t merged;
    if (lookup(sym[i], sym[next[i]], &key, &merged)) pq.push({key, i, sym[i], sym[next[i]], merged});
  };
  for (size_t i = 0; i + 1 < n; ++i) try_push(int(i));
  while (!pq.empty()) {
    Cand c = pq.top();
    pq.pop();
    int i = c.pos;
    if (!alive[i] || next[i] < 0 || sym[i] != c.left || sym[next[i]] != c.right) continue;
    int j = next[i];
    sym[i] = c.merged;
    alive[j] = 0;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    try_push(prev[i]);
    try_push(i);
  }
  std::vector<int64_t> out;
  for (int i = 0; i >= 0; i = next[i]) out.push_back(sym[i]);
  return out;
}

}  // namespace peft::tok
