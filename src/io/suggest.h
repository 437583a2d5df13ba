// "Did you mean": the known name closest to a misspelt option or config field, for the
// messages that refuse or warn about an unknown name (peft train's --options, adapter configs).
// Distance: optimal string alignment (Levenshtein with adjacent transpositions, Damerau 1964),
// so "lora_alpah" is one edit from "lora_alpha". A name counts as a typo of a known one within
// max(1, min(3, |name| / 4)) edits; further than that, no suggestion.
#pragma once
#include <algorithm>
#include <string>
#include <vector>

namespace peft {

inline size_t edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[n][m];
}

/// The known name nearest to `name` when it is close enough to be a typo of it, else "".
/// Ties go to the first in `known`.
inline std::string closest_name(const std::string& name, const std::vector<std::string>& known) {
  const size_t limit = std::max<size_t>(1, std::min<size_t>(3, name.size() / 4));
  std::string best;
  size_t best_d = limit + 1;
  for (auto& k : known) {
    const size_t dist = edit_distance(name, k);
    if (dist < best_d) best_d = dist, best = k;
  }
  return best;
}

/// " (did you mean '<prefix><closest>'?)" or "" when nothing is close.
inline std::string did_you_mean(const std::string& name, const std::vector<std::string>& known,
                                const std::string& prefix = "") {
  auto c = closest_name(name, known);
  return c.empty() ? "" : " (did you mean '" + prefix + c + "'?)";
}

}  // namespace peft
