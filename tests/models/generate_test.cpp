// Encoder-decoder generation: beam search semantics on a toy model whose next-token
// distribution is a hand-written table, and beam width 1 == greedy on the T5 fixture.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "peft/generate.h"
#include "peft/io.h"
#include "peft/model.h"
#include "test_util.h"

using namespace peft;

namespace {

// Vocabulary: 0 = pad / decoder start, 1 = EOS, 2 = "a", 3 = "b". The next-token distribution
// depends on the generated history, which the toy keeps in cache.k[0] ([rows, 1, len, 1], token
// ids as floats) so that beam search's cache reordering is exercised.
class ToySeq2Seq : public PretrainedModel {
 public:
  ToySeq2Seq() { config = {{"eos_token_id", 1}, {"pad_token_id", 0}, {"decoder_start_token_id", 0}}; }

  static std::vector<double> dist(const std::vector<int64_t>& hist) {  // hist excludes the start token
    if (hist.empty()) return {0.01, 0.39, 0.5, 0.1};
    if (hist == std::vector<int64_t>{2}) return {0.01, 0.6, 0.2, 0.19};
    return {0.01, 0.09, 0.5, 0.4};
  }

  ModelOutput forward(const ModelInput& in) override {
    ModelOutput out;
    const int64_t B = in.decoder_input_ids.size(0), T = in.decoder_input_ids.size(1);
    out.encoder_last_hidden_state =
        in.encoder_hidden_states.defined() ? in.encoder_hidden_states : torch::zeros({in.input_ids.size(0), 3, 1});
    auto ids = in.decoder_input_ids.to(torch::kFloat32).view({B, 1, T, 1});
    torch::Tensor hist = ids;
    if (in.cache) {
      if (in.cache->k.empty()) in.cache->k.resize(1), in.cache->v.resize(1);
      if (in.cache->k[0].defined()) hist = torch::cat({in.cache->k[0], ids}, 2);
      in.cache->k[0] = hist;
      in.cache->v[0] = hist;
    }
    out.logits = torch::zeros({B, T, 4});
    for (int64_t b = 0; b < B; ++b) {
      std::vector<int64_t> h;
      for (int64_t t = 1; t < hist.size(2); ++t) h.push_back(static_cast<int64_t>(hist[b][0][t][0].item<float>()));
      auto p = dist(h);
      for (int64_t v = 0; v < 4; ++v) out.logits[b][T - 1][v] = std::log(p[v]);
    }
    return out;
  }
  torch::Tensor embed_tokens(const torch::Tensor& ids) override { return torch::zeros({ids.size(0), ids.size(1), 1}); }
  ModelDims dims() const override { return {}; }
  TaskType task() const override { return TaskType::Seq2SeqLM; }
  std::string model_type() const override { return "toy"; }
  std::string layers_pattern() const override { return "block"; }
  std::map<std::string, std::string> roles() const override { return {}; }
  bool is_encoder_decoder() const override { return true; }
};

torch::Tensor ids1() { return torch::tensor({{5, 6, 7}}, torch::kLong); }

}  // namespace

TEST(Generate, GreedyOnToy) {
  ToySeq2Seq m;
  GenerateOptions o;
  o.max_new_tokens = 5;
  auto r = generate_seq2seq(m, ids1(), {}, o);
  // a (0.5) then EOS (0.6): stops.
  EXPECT_TRUE(torch::equal(r.sequences, torch::tensor({{0, 2, 1}}, torch::kLong))) << r.sequences;
  EXPECT_NEAR(r.scores[0].item<double>(), std::log(0.5) + std::log(0.6), 1e-5);
}

// Hand trace (num_beams 2): step 1 keeps beams "a" (log .5), "b" (log .1) and closes "<eos>"
// (log .39, 1 token). Step 2 closes "a <eos>" (log .5 + log .6 = -1.204, 2 tokens), keeps
// "a a", "a b". length_penalty 1: scores -0.942 vs -0.602, and no open beam can reach the worst
// (-0.942) at step 3 (best -2.996 / 3) -> "a <eos>". length_penalty 0: raw sums -0.942 vs -1.204,
// done at step 2 (worst -1.204 >= best open -1.204) -> "<eos>".
TEST(Generate, BeamSearchLengthPenaltyAndEos) {
  ToySeq2Seq m;
  GenerateOptions o;
  o.max_new_tokens = 3;
  o.num_beams = 2;
  o.length_penalty = 1.0;
  auto r = generate_seq2seq(m, ids1(), {}, o);
  EXPECT_TRUE(torch::equal(r.sequences, torch::tensor({{0, 2, 1}}, torch::kLong))) << r.sequences;
  EXPECT_NEAR(r.scores[0].item<double>(), (std::log(0.5) + std::log(0.6)) / 2, 1e-5);

  o.length_penalty = 0.0;
  r = generate_seq2seq(m, ids1(), {}, o);
  EXPECT_TRUE(torch::equal(r.sequences, torch::tensor({{0, 1}}, torch::kLong))) << r.sequences;
  EXPECT_NEAR(r.scores[0].item<double>(), std::log(0.39), 1e-5);

  // Batch of two identical rows: same answer per row.
  auto two = torch::cat({ids1(), ids1()}, 0);
  r = generate_seq2seq(m, two, torch::ones({2, 3}, torch::kLong), o);
  EXPECT_TRUE(torch::equal(r.sequences, torch::tensor({{0, 1}, {0, 1}}, torch::kLong))) << r.sequences;
}

// Without EOS (eos id out of reach) beams run to max length; 3 beams over "a"/"b" histories.
TEST(Generate, BeamSearchRunsToMaxLengthWithoutEos) {
  ToySeq2Seq m;
  GenerateOptions o;
  o.max_new_tokens = 2;
  o.num_beams = 3;
  o.eos_token_id = 7;  // never produced (vocab 4)
  auto r = generate_seq2seq(m, ids1(), {}, o);
  // Best 2-token sums: "a <1>" = log .5 + log .6 (token 1 is an ordinary token here) = -1.204.
  EXPECT_TRUE(torch::equal(r.sequences, torch::tensor({{0, 2, 1}}, torch::kLong))) << r.sequences;
  EXPECT_NEAR(r.scores[0].item<double>(), (std::log(0.5) + std::log(0.6)) / 2, 1e-5);
}

TEST(Generate, BeamWidthOneEqualsGreedyOnT5) {
  auto model = load_model(test::source_path("tests/fixtures/hf/models/t5"));
  model->eval();
  auto in = load_safetensors(test::source_path("tests/fixtures/hf/models/t5/inputs.safetensors"));
  GenerateOptions g;
  g.max_new_tokens = 6;
  auto greedy = generate_seq2seq(*model, in["input_ids"], in["attention_mask"], g);
  EXPECT_EQ(greedy.sequences.size(0), 2);
  EXPECT_EQ(greedy.sequences[0][0].item<int64_t>(), 0);
  // Greedy must agree with argmax over the full (uncached) decoder forward.
  ModelInput full;
  full.input_ids = in["input_ids"];
  full.attention_mask = in["attention_mask"];
  full.decoder_input_ids = greedy.sequences.slice(1, 0, -1);
  torch::NoGradGuard ng;
  auto am = model->forward(full).logits.argmax(-1);
  auto gen = greedy.sequences.slice(1, 1);
  auto is_eos = gen.eq(1).to(torch::kLong);
  auto real = (is_eos.cumsum(1) - is_eos).eq(0);  // up to and including the first EOS
  EXPECT_TRUE(torch::equal(am.masked_select(real), gen.masked_select(real))) << am << gen;

  // The beam-search path with one beam finds greedy's sequences; with length_penalty 0 its
  // score is the same sum of log-probs.
  GenerateOptions b = g;
  b.num_beams = 1;
  b.length_penalty = 0.0;
  auto one = beam_search_seq2seq(*model, in["input_ids"], in["attention_mask"], b);
  EXPECT_TRUE(torch::equal(one.sequences, greedy.sequences)) << one.sequences << greedy.sequences;
  EXPECT_TRUE(torch::allclose(one.scores, greedy.scores, 1e-5, 1e-5)) << one.scores << greedy.scores;

  // Wider beams: with length_penalty 0 the reported score is the sum of the log-probs of the
  // returned tokens (up to and including EOS) under a full, uncached forward.
  b.num_beams = 3;
  auto beams = generate_seq2seq(*model, in["input_ids"], in["attention_mask"], b);
  ASSERT_EQ(beams.sequences.size(0), 2);
  full.decoder_input_ids = beams.sequences.slice(1, 0, -1);
  auto logp = torch::log_softmax(model->forward(full).logits, -1);
  auto toks = beams.sequences.slice(1, 1);
  auto e = toks.eq(1).to(torch::kLong);
  auto keep = (e.cumsum(1) - e).eq(0).to(torch::kFloat32);
  auto sums = (logp.gather(2, toks.unsqueeze(2)).squeeze(2) * keep).sum(1);
  EXPECT_TRUE(torch::allclose(sums, beams.scores, 1e-4, 1e-4)) << sums << beams.scores;
}

TEST(Generate, BeamWidthOneEqualsGreedyOnToy) {
  ToySeq2Seq m;
  GenerateOptions o;
  o.max_new_tokens = 4;
  o.num_beams = 1;
  auto g = generate_seq2seq(m, ids1(), {}, o);
  auto b = beam_search_seq2seq(m, ids1(), {}, o);
  EXPECT_TRUE(torch::equal(g.sequences, b.sequences)) << b.sequences;
}

TEST(Generate, RejectsDecoderOnlyAndBadOptions) {
  auto llama = load_model(test::source_path("tests/fixtures/hf/models/llama"));
  EXPECT_THROW(generate_seq2seq(*llama, torch::ones({1, 2}, torch::kLong), {}), peft::Error);
  ToySeq2Seq m;
  GenerateOptions o;
  o.num_beams = 0;
  EXPECT_THROW(generate_seq2seq(m, ids1(), {}, o), peft::Error);
}
