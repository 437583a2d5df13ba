// Evaluation metrics: corpus BLEU and chrF as sacreBLEU 2.x computes them by default, ROUGE-L
// as rouge-score does (no stemming), and classification / regression scores as sklearn / scipy.
//
//   std::vector<std::string> hyps = {...};
//   std::vector<std::vector<std::string>> refs = {{"ref a1", "ref a2"}, {"ref b1"}};  // per hypothesis
//   double bleu = peft::corpus_bleu(hyps, refs).score;   // 0..100, like sacreBLEU
//   double chrf = peft::corpus_chrf(hyps, refs).score;   // 0..100
//   double rl = peft::rouge_l(hyps, refs);               // 0..1, like rouge-score
//
// NOTE: references are given per hypothesis (refs[i] = all references of hyps[i], any number
// >= 1), not as sacreBLEU's reference streams (streams[k][i]); transpose when porting.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace peft {

struct BleuOptions {
  std::string tokenize = "13a";      // "13a" (mteval-v13a, sacreBLEU's default) or "none"
  std::string smooth_method = "exp"; // "exp" (default), "floor", "add-k", "none"
  double smooth_value = -1;          // < 0: the method's default (floor 0.1, add-k 1)
  bool effective_order = false;      // only average the orders the hypotheses have n-grams for
  bool lowercase = false;
  int max_ngram_order = 4;
};

struct BleuResult {
  double score = 0;                       // 0..100
  std::vector<int64_t> counts, totals;    // matching / hypothesis n-grams per order
  std::vector<double> precisions;         // per order, percent (after smoothing)
  double bp = 0;                          // brevity penalty
  int64_t sys_len = 0, ref_len = 0;       // hypothesis tokens / closest reference lengths
};

/// sacreBLEU's 13a tokenization of one line.
std::string tokenize_13a(const std::string& line);

/// Corpus BLEU. refs.size() == hyps.size(); every refs[i] non-empty (else peft::Error).
BleuResult corpus_bleu(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs,
                       const BleuOptions& opt = {});
/// BLEU from sufficient statistics (sacreBLEU's compute_bleu).
BleuResult compute_bleu(std::vector<int64_t> counts, std::vector<int64_t> totals, int64_t sys_len, int64_t ref_len,
                        const BleuOptions& opt = {});

struct ChrfOptions {
  int char_order = 6;
  int word_order = 0;  // only 0 (chrF, not chrF++) is supported
  double beta = 2;
  bool remove_whitespace = true;
  bool eps_smoothing = false;  // sacreBLEU 2.x default: effective-order averaging
};
struct ChrfResult {
  double score = 0;  // 0..100
};
/// Corpus chrF: statistics summed over sentences; with several references, each sentence
/// uses the reference with the best sentence-level score.
ChrfResult corpus_chrf(const std::vector<std::string>& hyps, const std::vector<std::vector<std::string>>& refs,
                       const ChrfOptions& opt = {});

/// rouge-score's default tokens: lowercase, runs of characters outside [a-z0-9] become spaces.
std::vector<std::string> rouge_tokenize(const std::string& text);
/// ROUGE-L F-measure of one prediction against one reference (LCS over rouge_tokenize tokens).
double rouge_l_pair(const std::string& prediction, const std::string& reference);
/// Mean over examples of the best ROUGE-L F-measure over each example's references (0..1).
double rouge_l(const std::vector<std::string>& predictions, const std::vector<std::vector<std::string>>& refs);

/// Fraction of equal entries (sizes must match, non-empty).
double accuracy(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels);
/// sklearn f1_score: average "macro" (unweighted mean over the classes seen in labels or
/// predictions; a class with no true or predicted positives scores 0) or "binary" (class
/// pos_label only).
double f1_score(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels,
                const std::string& average = "macro", int64_t pos_label = 1);
/// sklearn matthews_corrcoef (multi-class form; 0 when undefined).
double matthews_corrcoef(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels);
/// Pearson r; NaN when either input is constant.
double pearson(const std::vector<double>& x, const std::vector<double>& y);
/// Spearman rho: Pearson r of the ranks (ties get the average rank).
double spearman(const std::vector<double>& x, const std::vector<double>& y);
/// exp(mean token loss).
double perplexity(double mean_loss);

}  // namespace peft
