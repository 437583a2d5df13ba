// Text-generation metrics: BLEU (sacreBLEU 2.x semantics), chrF, ROUGE-L (rouge-score).
#include <algorithm>
#include <cmath>
#include <map>
#include <unordered_map>

#include "peft/error.h"
#include "peft/metrics.h"
#include "tokenizer/unicode.h"

namespace peft {

namespace {

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  size_t pos = 0;
  while ((pos = s.find(from, pos)) != std::string::npos) {
    s.replace(pos, from.size(), to);
    pos += to.size();
  }
}

// Python's str.isspace(): Unicode White_Space plus the ASCII separators U+001C..U+001F.
bool py_space(uint32_t cp) { return tok::is_space(cp) || (cp >= 0x1C && cp <= 0x1F); }

// Python's str.split() with no argument, on UTF-8 text.
std::vector<std::string> py_split(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  size_t i = 0;
  while (i < s.size()) {
    int n = tok::utf8_len(static_cast<unsigned char>(s[i]));
    if (i + static_cast<size_t>(n) > s.size()) n = 1;
    uint32_t cp = 0;
    if (n == 1) {
      cp = static_cast<unsigned char>(s[i]);
    } else {
      auto cps = tok::utf8_decode(tok::utf8_lossy(s.substr(i, static_cast<size_t>(n))));
      cp = cps.empty() ? 0 : cps[0];
    }
    if (py_space(cp)) {
      if (!cur.empty()) out.push_back(std::move(cur));
      cur.clear();
    } else {
      cur.append(s, i, static_cast<size_t>(n));
    }
    i += static_cast<size_t>(n);
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

std::string py_lower(const std::string& s) {
  std::string out;
  for (uint32_t cp : tok::utf8_decode(tok::utf8_lossy(s))) tok::utf8_append(out, tok::to_lower(cp));
  return out;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// mteval-v13a's first rule: these ASCII symbols become separate tokens.
bool v13a_symbol(char c) {
  return (c >= '{' && c <= '~') || (c >= '[' && c <= '`') || (c >= ' ' && c <= '&') || (c >= '(' && c <= '+') ||
         (c >= ':' && c <= '@') || c == '/';
}

// One left-to-right pass of a two-character regex substitution (non-overlapping matches).
template <class Match, class Emit>
std::string sub2(const std::string& s, Match match, Emit emit) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    if (i + 1 < s.size() && match(s[i], s[i + 1])) {
      emit(out, s[i], s[i + 1]);
      i += 2;
    } else {
      out += s[i++];
    }
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? " " : "") + v[i];
  return out;
}

using NgramCounts = std::unordered_map<std::string, int64_t>;

// Word n-grams of orders 1..max_order over whitespace-split tokens (key: tokens joined by \x01).
NgramCounts word_ngrams(const std::vector<std::string>& toks, int max_order) {
  NgramCounts c;
  for (int n = 1; n <= max_order; ++n)
    for (size_t i = 0; i + static_cast<size_t>(n) <= toks.size(); ++i) {
      std::string key = std::to_string(n);
      for (int k = 0; k < n; ++k) key += '\x01' + toks[i + static_cast<size_t>(k)];
      ++c[key];
    }
  return c;
}

int key_order(const std::string& key) { return std::stoi(key.substr(0, key.find('\x01'))); }

std::vector<std::string> bleu_tokens(const std::string& s, const BleuOptions& o) {
  std::string t = o.lowercase ? py_lower(s) : s;
  while (!t.empty() && py_space(static_cast<unsigned char>(t.back()))) t.pop_back();  // sacreBLEU rstrip()s
  if (o.tokenize == "13a") t = tokenize_13a(t);
  else PEFT_CHECK(o.tokenize == "none", "BLEU: unknown tokenizer '", o.tokenize, "' (use 13a or none)");
  return py_split(t);
}

}  // namespace

std::string tokenize_13a(const std::string& in) {
  std::string s = in;
  replace_all(s, "<skipped>", "");
  replace_all(s, "-\n", "");
  replace_all(s, "\n", " ");
  if (s.find('&') != std::string::npos) {
    replace_all(s, "&quot;", "\"");
    replace_all(s, "&amp;", "&");
    replace_all(s, "&lt;", "<");
    replace_all(s, "&gt;", ">");
  }
  s = " " + s + " ";
  std::string t;
  for (char c : s) {
    if (v13a_symbol(c)) {
      t += ' ';
      t += c;
      t += ' ';
    } else {
      t += c;
    }
  }
  auto is_pc = [](char c) { return c == '.' || c == ','; };
  t = sub2(t, [&](char a, char b) { return !is_digit(a) && is_pc(b); },
           [](std::string& o, char a, char b) { o += a, o += ' ', o += b, o += ' '; });
  t = sub2(t, [&](char a, char b) { return is_pc(a) && !is_digit(b); },
           [](std::string& o, char a, char b) { o += ' ', o += a, o += ' ', o += b; });
  t = sub2(t, [&](char a, char b) { return is_digit(a) && b == '-'; },
           [](std::string& o, char a, char b) { o += a, o += ' ', o += b, o += ' '; });
  return join(py_split(t));
}

BleuResult compute_bleu(std::vector<int64_t> counts, std::vector<int64_t> totals, int64_t sys_len, int64_t ref_len,
                        const BleuOptions& o) {
  const int N = o.max_ngram_order;
  PEFT_CHECK(static_cast<int>(counts.size()) == N && static_cast<int>(totals.size()) == N,
             "BLEU: expected ", N, " n-gram counts and totals");
  double sv = o.smooth_value;
  if (sv < 0) sv = o.smooth_method == "floor" ? 0.1 : o.smooth_method == "add-k" ? 1.0 : 0.0;
  PEFT_CHECK(o.smooth_method == "exp" || o.smooth_method == "floor" || o.smooth_method == "add-k" ||
                 o.smooth_method == "none",
             "BLEU: unknown smooth_method '", o.smooth_method, "'");
  BleuResult r;
  r.sys_len = sys_len;
  r.ref_len = ref_len;
  r.bp = sys_len < ref_len ? (sys_len > 0 ? std::exp(1.0 - static_cast<double>(ref_len) / sys_len) : 0.0) : 1.0;
  r.precisions.assign(static_cast<size_t>(N), 0.0);
  r.counts = counts;
  r.totals = totals;
  if (std::all_of(counts.begin(), counts.end(), [](int64_t c) { return c == 0; })) return r;  // score 0
  std::vector<double> correct(counts.begin(), counts.end()), total(totals.begin(), totals.end());
  double smooth_mteval = 1.0;
  int eff_order = N;
  for (int n = 1; n <= N; ++n) {
    size_t i = static_cast<size_t>(n - 1);
    if (o.smooth_method == "add-k" && n > 1) {
      correct[i] += sv;
      total[i] += sv;
    }
    if (total[i] == 0) break;
    if (o.effective_order) eff_order = n;
    if (correct[i] == 0) {
      if (o.smooth_method == "exp") {
        smooth_mteval *= 2;
        r.precisions[i] = 100.0 / (smooth_mteval * total[i]);
      } else if (o.smooth_method == "floor") {
        r.precisions[i] = 100.0 * sv / total[i];
      }
    } else {
      r.precisions[i] = 100.0 * correct[i] / total[i];
    }
  }
  double log_sum = 0;
  for (int i = 0; i < eff_order; ++i) {
    double p = r.precisions[static_cast<size_t>(i)];
    log_sum += p == 0 ? -9999999999.0 : std::log(p);
  }
  r.score = r.bp * std::exp(log_sum / eff_order);
  return r;
}

BleuResult corpus_bleu(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs,
                       const BleuOptions& o) {
  PEFT_CHECK(hyps.size() == refs.size(), "BLEU: ", hyps.size(), " hypotheses but ", refs.size(),
             " reference lists");
  const int N = o.max_ngram_order;
  PEFT_CHECK(N >= 1, "BLEU: max_ngram_order must be >= 1");
  std::vector<int64_t> counts(static_cast<size_t>(N), 0), totals(static_cast<size_t>(N), 0);
  int64_t sys_len = 0, ref_len = 0;
  for (size_t s = 0; s < hyps.size(); ++s) {
    PEFT_CHECK(!refs[s].empty(), "BLEU: hypothesis ", s, " has no reference");
    auto h = bleu_tokens(hyps[s], o);
    int64_t hl = static_cast<int64_t>(h.size());
    NgramCounts ref_max;
    int64_t closest_diff = -1, closest_len = -1;
    for (auto& ref : refs[s]) {
      auto rt = bleu_tokens(ref, o);
      int64_t rl = static_cast<int64_t>(rt.size()), diff = std::llabs(hl - rl);
      if (closest_diff == -1 || diff < closest_diff) {
        closest_diff = diff;
        closest_len = rl;
      } else if (diff == closest_diff && rl < closest_len) {
        closest_len = rl;
      }
      for (auto& [k, c] : word_ngrams(rt, N)) ref_max[k] = std::max(ref_max[k], c);
    }
    sys_len += hl;
    ref_len += closest_len;
    for (auto& [k, c] : word_ngrams(h, N)) {
      auto it = ref_max.find(k);
      if (it != ref_max.end()) counts[static_cast<size_t>(key_order(k) - 1)] += std::min(c, it->second);
    }
    for (int n = 1; n <= N; ++n) totals[static_cast<size_t>(n - 1)] += std::max<int64_t>(0, hl - n + 1);
  }
  return compute_bleu(counts, totals, sys_len, ref_len, o);
}

// ---- chrF ----

namespace {

// Per order: hypothesis n-grams, reference n-grams, matches.
using ChrfStats = std::vector<double>;

std::vector<std::map<std::u32string, int64_t>> char_ngrams(const std::string& s, const ChrfOptions& o) {
  std::u32string line;
  for (uint32_t cp : tok::utf8_decode(tok::utf8_lossy(s)))
    if (!o.remove_whitespace || !py_space(cp)) line += static_cast<char32_t>(cp);
  std::vector<std::map<std::u32string, int64_t>> out(static_cast<size_t>(o.char_order));
  for (int n = 1; n <= o.char_order; ++n)
    for (size_t i = 0; i + static_cast<size_t>(n) <= line.size(); ++i) ++out[static_cast<size_t>(n - 1)][line.substr(i, static_cast<size_t>(n))];
  return out;
}

ChrfStats chrf_stats(const std::vector<std::map<std::u32string, int64_t>>& h,
                     const std::vector<std::map<std::u32string, int64_t>>& r) {
  ChrfStats st;
  for (size_t n = 0; n < h.size(); ++n) {
    double nh = 0, nr = 0, m = 0;
    for (auto& [g, c] : h[n]) {
      nh += static_cast<double>(c);
      auto it = r[n].find(g);
      if (it != r[n].end()) m += static_cast<double>(std::min(c, it->second));
    }
    for (auto& [g, c] : r[n]) nr += static_cast<double>(c);
    st.insert(st.end(), {nh, nr, m});
  }
  return st;
}

double chrf_f(const ChrfStats& st, const ChrfOptions& o) {
  const double eps = 1e-16, factor = o.beta * o.beta;
  const size_t order = st.size() / 3;
  double score = 0, avg_p = 0, avg_r = 0;
  int eff = 0;
  for (size_t i = 0; i < order; ++i) {
    double nh = st[3 * i], nr = st[3 * i + 1], m = st[3 * i + 2];
    double p = nh > 0 ? m / nh : eps, r = nr > 0 ? m / nr : eps;
    double denom = factor * p + r;
    score += denom > 0 ? (1 + factor) * p * r / denom : eps;
    if (nh > 0 && nr > 0) {
      ++eff;
      avg_p += p;
      avg_r += r;
    }
  }
  if (o.eps_smoothing) return 100.0 * score / static_cast<double>(order);
  if (eff == 0) return 0.0;
  avg_p /= eff;
  avg_r /= eff;
  if (avg_p + avg_r == 0) return 0.0;
  return 100.0 * (1 + factor) * avg_p * avg_r / (factor * avg_p + avg_r);
}

}  // namespace

ChrfResult corpus_chrf(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs,
                       const ChrfOptions& o) {
  PEFT_CHECK(hyps.size() == refs.size(), "chrF: ", hyps.size(), " hypotheses but ", refs.size(), " reference lists");
  PEFT_CHECK(o.word_order == 0, "chrF: word_order > 0 (chrF++) is not supported");
  PEFT_CHECK(o.char_order >= 1, "chrF: char_order must be >= 1");
  ChrfStats total(static_cast<size_t>(3 * o.char_order), 0.0);
  for (size_t s = 0; s < hyps.size(); ++s) {
    PEFT_CHECK(!refs[s].empty(), "chrF: hypothesis ", s, " has no reference");
    auto h = char_ngrams(hyps[s], o);
    ChrfStats best;
    double best_f = -1;
    for (auto& ref : refs[s]) {
      ChrfStats st = chrf_stats(h, char_ngrams(ref, o));
      double f = chrf_f(st, o);
      if (f > best_f) {
        best_f = f;
        best = std::move(st);
      }
    }
    for (size_t i = 0; i < total.size(); ++i) total[i] += best[i];
  }
  return {chrf_f(total, o)};
}

// ---- ROUGE-L ----

std::vector<std::string> rouge_tokenize(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : text) {
    char c = (ch >= 'A' && ch <= 'Z') ? static_cast<char>(ch - 'A' + 'a') : ch;
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
      cur += c;
    } else if (!cur.empty()) {
      out.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) out.push_back(std::move(cur));
  return out;
}

double rouge_l_pair(const std::string& prediction, const std::string& reference) {
  auto p = rouge_tokenize(prediction), r = rouge_tokenize(reference);
  if (p.empty() || r.empty()) return 0.0;
  std::vector<int64_t> prev(r.size() + 1, 0), cur(r.size() + 1, 0);
  for (size_t i = 1; i <= p.size(); ++i) {
    for (size_t j = 1; j <= r.size(); ++j)
      cur[j] = p[i - 1] == r[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
    std::swap(prev, cur);
  }
  double lcs = static_cast<double>(prev[r.size()]);
  double precision = lcs / static_cast<double>(p.size()), recall = lcs / static_cast<double>(r.size());
  return precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
}

double rouge_l(const std::vector<std::string>& predictions, const std::vector<std::vector<std::string>>& refs) {
  PEFT_CHECK(predictions.size() == refs.size(), "ROUGE-L: ", predictions.size(), " predictions but ", refs.size(),
             " reference lists");
  PEFT_CHECK(!predictions.empty(), "ROUGE-L: no predictions");
  double sum = 0;
  for (size_t i = 0; i < predictions.size(); ++i) {
    PEFT_CHECK(!refs[i].empty(), "ROUGE-L: prediction ", i, " has no reference");
    double best = 0;
    for (auto& r : refs[i]) best = std::max(best, rouge_l_pair(predictions[i], r));
    sum += best;
  }
  return sum / static_cast<double>(predictions.size());
}

}  // namespace peft
