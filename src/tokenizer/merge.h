// Greedy pair merging shared by the BPE implementations: repeatedly merge the adjacent pair
// with the best priority (lowest key; leftmost on ties) until no pair can be merged.
#pragma once
#include <cstdint>
#include <functional>
#include <algorithm>
#include <cmath>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/unicode.h"

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

/// Unigram segmentation (Kudo 2018): the Viterbi path of highest total piece score over the
/// code-point boundaries of `s`. find(piece, &id, &score) looks a piece up; a code point with no
/// piece of its own is one unknown token scored `unk_score`. Returns (start byte, id) per
/// token, id -2 for unknown.
template <class Find>
std::vector<std::pair<size_t, int64_t>> unigram_viterbi(const std::string& s, size_t max_len, double unk_score, Find&& find) {
  const size_t n = s.size();
  std::vector<double> best(n + 1, -INFINITY);
  std::vector<int64_t> back_id(n + 1, -1);
  std::vector<size_t> back_pos(n + 1, 0);
  best[0] = 0;
  auto relax = [&](size_t from, size_t to, int64_t id, double score) {
    double sc = best[from] + score;
    if (sc > best[to]) {
      best[to] = sc;
      back_id[to] = id;
      back_pos[to] = from;
    }
  };
  for (size_t i = 0; i < n; ++i) {
    if (best[i] == -INFINITY || (s[i] & 0xC0) == 0x80) continue;
    size_t cl = std::min(size_t(utf8_len((unsigned char)s[i])), n - i);
    bool single = false;
    for (size_t l = 1; l <= max_len && i + l <= n; ++l) {
      if (i + l < n && (s[i + l] & 0xC0) == 0x80) continue;
      int64_t id;
      double score;
      if (!find(s.substr(i, l), &id, &score)) continue;
      if (l == cl) single = true;
      relax(i, i + l, id, score);
    }
    if (!single) relax(i, i + cl, -2, unk_score);
  }
  std::vector<std::pair<size_t, int64_t>> path;
  for (size_t e = n; e > 0;) {
    size_t b = back_pos[e];
    path.push_back({b, back_id[e]});
    e = b;
  }
  std::reverse(path.begin(), path.end());
  return path;
}

}  // namespace peft::tok
