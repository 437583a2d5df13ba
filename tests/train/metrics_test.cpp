// Metrics against independent references: hand-computed cases (worked in the comments) and
// numbers published by the reference implementations' own tests and documentation:
//  - sacreBLEU test/test_bleu.py and test/test_chrf.py (github.com/mjpost/sacrebleu)
//  - scikit-learn docs: f1_score, matthews_corrcoef, accuracy_score examples
//  - SciPy docs: scipy.stats.pearsonr and scipy.stats.spearmanr examples
#include <gtest/gtest.h>

#include <cmath>

#include "peft/error.h"
#include "peft/metrics.h"

namespace {

using Refs = std::vector<std::vector<std::string>>;

// sacreBLEU's README / test_bleu.py corpus, its two reference streams regrouped per hypothesis.
const std::vector<std::string> kHyps = {"The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."};
const Refs kRefs = {{"The dog bit the man.", "The dog had bit the man."},
                    {"It was not unexpected.", "No one was surprised."},
                    {"The man bit him first.", "The man had bitten the dog."}};

peft::BleuOptions raw_bleu(double floor_value) {  // sacrebleu.raw_corpus_bleu(..., smooth_value)
  peft::BleuOptions o;
  o.tokenize = "none";
  o.smooth_method = "floor";
  o.smooth_value = floor_value;
  o.effective_order = true;
  return o;
}

}  // namespace

// ---- BLEU ----

TEST(Bleu, IdenticalIs100) {
  EXPECT_DOUBLE_EQ(peft::corpus_bleu({"the cat sat on the mat today"}, {{"the cat sat on the mat today"}}).score, 100.0);
}

TEST(Bleu, HandComputedWithExpSmoothing) {
  // hyp "the cat sat on the mat", ref "the cat is on the mat" (6 tokens each, bp = 1)
  //  1-grams: the×2 cat on mat match, sat does not       -> 5/6
  //  2-grams: "the cat" "on the" "the mat" of 5           -> 3/5
  //  3-grams: "on the mat" of 4                           -> 1/4
  //  4-grams: 0 of 3 -> exp smoothing: 1 / (2 × 3)       -> 1/6
  //  BLEU = (5/6 · 3/5 · 1/4 · 1/6)^(1/4) = (1/48)^(1/4)
  auto r = peft::corpus_bleu({"the cat sat on the mat"}, {{"the cat is on the mat"}});
  EXPECT_NEAR(r.score, 100.0 * std::pow(48.0, -0.25), 1e-9);
  EXPECT_EQ(r.counts, (std::vector<int64_t>{5, 3, 1, 0}));
  EXPECT_EQ(r.totals, (std::vector<int64_t>{6, 5, 4, 3}));
}

TEST(Bleu, HandComputedBrevityPenaltyAndClosestReference) {
  // hyp "the cat" (2 tokens); refs of 6 and 3 tokens -> closest length 3, bp = exp(1 - 3/2).
  // Orders 3 and 4 have no hypothesis n-grams: BLEU is 0 unless effective order is used,
  // then (1 · 1)^(1/2) · bp.
  Refs refs = {{"the cat sat on the mat", "the cat sat"}};
  EXPECT_NEAR(peft::corpus_bleu({"the cat"}, refs).score, 0.0, 1e-9);
  peft::BleuOptions eff;
  eff.effective_order = true;
  auto r = peft::corpus_bleu({"the cat"}, refs, eff);
  EXPECT_EQ(r.ref_len, 3);
  EXPECT_NEAR(r.bp, std::exp(1.0 - 3.0 / 2.0), 1e-12);
  EXPECT_NEAR(r.score, 100.0 * std::exp(-0.5), 1e-9);
}

TEST(Bleu, Tokenizer13a) {
  // Rules of mteval-v13a as sacreBLEU applies them: symbols split, '.'/',' split unless next to
  // digits, '-' split after a digit, entities unescaped.
  EXPECT_EQ(peft::tokenize_13a("It wasn't surprising."), "It wasn't surprising .");
  EXPECT_EQ(peft::tokenize_13a("Costs $3,000.50 (approx.)"), "Costs $ 3,000.50 ( approx . )");
  EXPECT_EQ(peft::tokenize_13a("1990-2000 &amp; a-b"), "1990 - 2000 & a-b");
  EXPECT_EQ(peft::tokenize_13a("e.g. x,y"), "e . g . x , y");
}

TEST(Bleu, SacrebleuTestBleuCorpusCases) {
  // mjpost/sacrebleu test/test_bleu.py, test_corpus_bleu_cases.
  EXPECT_NEAR(peft::corpus_bleu(kHyps, kRefs).score, 48.530827, 1e-6);
  peft::BleuOptions none;
  none.tokenize = "none";
  EXPECT_NEAR(peft::corpus_bleu(kHyps, kRefs, none).score, 49.1919566, 1e-6);
  peft::BleuOptions no_smooth;
  no_smooth.smooth_method = "none";
  EXPECT_NEAR(peft::corpus_bleu(kHyps, kRefs, no_smooth).score, 48.530827, 1e-6);
  EXPECT_EQ(peft::corpus_bleu({"", "", ""}, kRefs).score, 0.0);  // empty hypotheses are kept
}

TEST(Bleu, SacrebleuTestBleuRawAndEffectiveOrderCases) {
  // test_raw_bleu_cases / test_case_effective_order (raw_corpus_bleu: no tokenization, floor
  // smoothing 0.01, effective order); expected values are fractions there, percent here.
  EXPECT_NEAR(peft::corpus_bleu({"this is a test"}, {{"this is a test"}}, raw_bleu(0.01)).score, 100.0, 1e-6);
  EXPECT_NEAR(peft::corpus_bleu({"this is a fest"}, {{"this is a test"}}, raw_bleu(0.01)).score, 22.3606797749979, 1e-6);
  EXPECT_NEAR(peft::corpus_bleu({"test"}, {{"a test"}}, raw_bleu(0.01)).score, 36.78794411714425, 1e-6);
  EXPECT_NEAR(peft::corpus_bleu({"a test"}, {{"a test"}}, raw_bleu(0.01)).score, 100.0, 1e-6);
  EXPECT_NEAR(peft::corpus_bleu({"a little test"}, {{"a test"}}, raw_bleu(0.01)).score, 3.218297948685433, 1e-6);
}

TEST(Bleu, SacrebleuTestBleuStatisticsOffsetAndScoring) {
  // test_case_statistics and test_case_offset.
  const std::string h = "am I am a character sequence", r = "I am a symbol string sequence a a";
  auto res = peft::corpus_bleu({h}, {{r}}, raw_bleu(0.01));
  EXPECT_EQ(res.counts, (std::vector<int64_t>{4, 2, 1, 0}));
  EXPECT_EQ(res.totals, (std::vector<int64_t>{6, 5, 4, 3}));
  EXPECT_NEAR(peft::corpus_bleu({h}, {{r}}, raw_bleu(0.0)).score, 0.0, 1e-9);
  EXPECT_NEAR(peft::corpus_bleu({h}, {{r}}, raw_bleu(-1)).score, 15.55722182, 1e-6);  // floor default 0.1
  // test_case_scoring: compute_bleu([9,7,5,3], [10,8,6,4], 11, 11) = 0.8375922397.
  EXPECT_NEAR(peft::compute_bleu({9, 7, 5, 3}, {10, 8, 6, 4}, 11, 11).score, 83.75922397, 1e-6);
}

TEST(Bleu, Errors) {
  EXPECT_THROW(peft::corpus_bleu({"a"}, {}), peft::Error);
  EXPECT_THROW(peft::corpus_bleu({"a"}, {{}}), peft::Error);
  peft::BleuOptions o;
  o.tokenize = "intl";
  EXPECT_THROW(peft::corpus_bleu({"a"}, {{"a"}}, o), peft::Error);
}

// ---- chrF ----

namespace {
double chrf(const std::vector<std::string>& h, const std::vector<std::string>& r, double beta, bool eps,
            bool remove_ws = true) {
  Refs refs;
  for (auto& x : r) refs.push_back({x});
  peft::ChrfOptions o;
  o.beta = beta;
  o.eps_smoothing = eps;
  o.remove_whitespace = remove_ws;
  return peft::corpus_chrf(h, refs, o).score;
}
}  // namespace

TEST(Chrf, IdenticalIs100AndHandComputed) {
  EXPECT_NEAR(peft::corpus_chrf({"a cat"}, {{"a cat"}}).score, 100.0, 1e-9);
  // "ab" vs "ac", default (beta 2, effective order): order 1: 1 of 2 chars match both ways
  // (P = R = 1/2); order 2: "ab" vs "ac", P = R = 0; orders 3-6 absent. Averages over the two
  // orders: P = R = 1/4, F = 1/4 -> 25.
  EXPECT_NEAR(peft::corpus_chrf({"ab"}, {{"ac"}}).score, 25.0, 1e-9);
}

TEST(Chrf, SacrebleuTestChrfCases) {
  // test_chrf.py test_cases: char_order 6, word_order 0, beta 3, eps_smoothing=True.
  EXPECT_NEAR(chrf({"abcdefg"}, {"hijklmnop"}, 3, true), 0.0, 1e-4);
  EXPECT_NEAR(chrf({""}, {"reference"}, 3, true), 0.0, 1e-4);
  EXPECT_NEAR(chrf({"aa"}, {"ab"}, 3, true), 8.3333, 1e-4);
  EXPECT_NEAR(chrf({"a", "b"}, {"a", "c"}, 3, true), 8.3333, 1e-4);
  EXPECT_NEAR(chrf({"a"}, {"a"}, 3, true), 16.6667, 1e-4);
  EXPECT_NEAR(chrf({"a b c"}, {"abc"}, 3, true), 50.0, 1e-4);
  EXPECT_NEAR(chrf({" risk assessment must be made of those who are qualified and expertise in the sector - these "
                    "are the scientists ."},
                   {"risk assessment has to be undertaken by those who are qualified and expert in that area - that "
                    "is the scientists ."},
                   3, true),
              63.361730, 1e-4);
  EXPECT_NEAR(chrf({" Die    Beziehung zwischen  Obama und Netanjahu ist nicht gerade  freundlich. "},
                   {"Das Verhältnis zwischen Obama und Netanyahu ist nicht gerade freundschaftlich."}, 3, true),
              64.1302698, 1e-4);
  EXPECT_NEAR(chrf({"Niemand hat die Absicht, eine Mauer zu errichten"},
                   {"Niemand hat die Absicht, eine Mauer zu errichten"}, 3, true),
              100.0, 1e-4);
}

TEST(Chrf, SacrebleuEffectiveOrderAndWhitespaceCases) {
  // test_cases_effective_order (eps_smoothing=False, the 2.x default), beta 3.
  EXPECT_NEAR(chrf({"a"}, {"a"}, 3, false), 100.0, 1e-4);
  EXPECT_NEAR(chrf({""}, {"reference"}, 3, false), 0.0, 1e-4);
  EXPECT_NEAR(chrf({"a b c"}, {"a b c"}, 3, false), 100.0, 1e-4);
  EXPECT_NEAR(chrf({"a b c"}, {"abc"}, 3, false), 100.0, 1e-4);
  EXPECT_NEAR(chrf({"a", "b"}, {"a", "c"}, 3, false), 50.0, 1e-4);
  EXPECT_NEAR(chrf({"aa"}, {"ab"}, 3, false), 25.0, 1e-4);
  // test_cases_keep_whitespace (remove_whitespace=False, eps smoothing off).
  EXPECT_NEAR(chrf({"Die Beziehung zwischen Obama und Netanjahu ist nicht gerade freundlich."},
                   {"Das Verhältnis zwischen Obama und Netanyahu ist nicht gerade freundschaftlich."}, 3, false, false),
              67.3481606, 1e-4);
}

TEST(Chrf, SacrebleuSentenceLevelCases) {
  // test_sentence_level_chrf: sentence_chrf(hyp, [ref], eps_smoothing=True), default beta 2.
  EXPECT_NEAR(chrf({"Co nás nejvíc trápí, protože lékaři si vybírají, kdo bude žít a kdo zemře."},
                   {"Nejvíce smutní jsme z toho, že musíme rozhodovat o tom, kdo bude žít a kdo zemře."}, 2, true),
              39.14078509, 1e-4);
  EXPECT_NEAR(chrf({"Nebo prostě nemají vybavení, které by jim pomohlo, uvedli lékaři."},
                   {"A někdy nemáme ani potřebný materiál, abychom jim pomohli, popsali lékaři."}, 2, true),
              31.22557079, 1e-4);
  EXPECT_NEAR(chrf({"Lapali po dechu, jejich životy skončily dřív, než skutečně začaly."},
                   {"Lapali po dechu a pak jejich život skončil - dřív, než skutečně mohl začít, připomněli."}, 2,
                   true),
              57.15704367, 1e-4);
}

TEST(Chrf, BestReferenceIsUsed) {
  EXPECT_NEAR(peft::corpus_chrf({"a cat"}, {{"a dog", "a cat"}}).score, 100.0, 1e-9);
}

// ---- ROUGE-L ----

TEST(RougeL, HandComputed) {
  // pred "The cat sat on the mat." -> the cat sat on the mat; ref -> the cat is on the mat.
  // LCS = the cat on the mat = 5; P = R = 5/6 -> F = 5/6.
  EXPECT_NEAR(peft::rouge_l_pair("The cat sat on the mat.", "the cat is on the mat"), 5.0 / 6.0, 1e-12);
  // pred "The quick brown dog jumps on the log." (8 tokens), ref "The quick brown fox jumps over
  // the lazy dog" (9): LCS = the quick brown jumps the = 5; P = 5/8, R = 5/9, F = 2PR/(P+R) = 10/17.
  EXPECT_NEAR(peft::rouge_l_pair("The quick brown dog jumps on the log.", "The quick brown fox jumps over the lazy dog"),
              10.0 / 17.0, 1e-12);
  EXPECT_EQ(peft::rouge_tokenize("Hello, WORLD! it's 2024"), (std::vector<std::string>{"hello", "world", "it", "s", "2024"}));
  EXPECT_EQ(peft::rouge_l_pair("", "a"), 0.0);
  // Mean over examples of the best reference.
  EXPECT_NEAR(peft::rouge_l({"a b", "x"}, {{"c", "a b"}, {"y"}}), 0.5, 1e-12);
}

// ---- classification / regression ----

TEST(ClassificationMetrics, SklearnDocExamples) {
  // sklearn accuracy_score: y_pred [0, 2, 1, 3], y_true [0, 1, 2, 3] -> 0.5
  EXPECT_DOUBLE_EQ(peft::accuracy({0, 2, 1, 3}, {0, 1, 2, 3}), 0.5);
  // sklearn f1_score: y_true [0, 1, 2, 0, 1, 2], y_pred [0, 2, 1, 0, 0, 1]; macro -> 0.26666...
  EXPECT_NEAR(peft::f1_score({0, 2, 1, 0, 0, 1}, {0, 1, 2, 0, 1, 2}, "macro"), 0.26666666666666666, 1e-12);
  // sklearn matthews_corrcoef: y_true [+1, +1, +1, -1], y_pred [+1, -1, +1, +1] -> -0.33333...
  EXPECT_NEAR(peft::matthews_corrcoef({1, -1, 1, 1}, {1, 1, 1, -1}), -0.33333333333333337, 1e-12);
}

TEST(ClassificationMetrics, HandComputed) {
  // Binary F1: preds 1 1 0 0, labels 1 0 1 0 -> tp 1, fp 1, fn 1 -> 2/(2+1+1) = 0.5.
  EXPECT_DOUBLE_EQ(peft::f1_score({1, 1, 0, 0}, {1, 0, 1, 0}, "binary"), 0.5);
  // MCC for the same: (tp·tn - fp·fn)/sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = (1-1)/2 = 0.
  EXPECT_DOUBLE_EQ(peft::matthews_corrcoef({1, 1, 0, 0}, {1, 0, 1, 0}), 0.0);
  EXPECT_DOUBLE_EQ(peft::matthews_corrcoef({1, 0, 1}, {1, 0, 1}), 1.0);
  EXPECT_DOUBLE_EQ(peft::matthews_corrcoef({1, 1, 1}, {1, 0, 1}), 0.0);  // undefined -> 0
  EXPECT_THROW(peft::accuracy({1}, {1, 2}), peft::Error);
  EXPECT_THROW(peft::f1_score({1}, {1}, "weighted"), peft::Error);
}

TEST(RegressionMetrics, ScipyDocExamplesAndTies) {
  // scipy.stats.pearsonr docs: x [1..7], y [10, 9, 2.5, 6, 4, 3, 2] -> -0.828503883588428
  EXPECT_NEAR(peft::pearson({1, 2, 3, 4, 5, 6, 7}, {10, 9, 2.5, 6, 4, 3, 2}), -0.828503883588428, 1e-12);
  // scipy.stats.spearmanr docs: [1, 2, 3, 4, 5], [5, 6, 7, 8, 7] -> 0.8207826816681233
  // (the two 7s share rank 3.5: ranks 1 2 3.5 5 3.5).
  EXPECT_NEAR(peft::spearman({1, 2, 3, 4, 5}, {5, 6, 7, 8, 7}), 0.8207826816681233, 1e-12);
  EXPECT_NEAR(peft::spearman({1, 2, 3}, {30, 20, 10}), -1.0, 1e-12);
  EXPECT_TRUE(std::isnan(peft::pearson({1, 1, 1}, {1, 2, 3})));
  EXPECT_NEAR(peft::perplexity(std::log(12.5)), 12.5, 1e-9);
}
