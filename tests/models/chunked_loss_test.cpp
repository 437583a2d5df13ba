// Chunked causal-LM loss (docs/MEMORY.md): MemoryOptions::loss_chunk_tokens = N (set through
// set_memory_options) computes the LM head, log-softmax and NLL N tokens at a time, each chunk
// recomputed in the backward. The reference is the unchunked loss (causal_lm_loss on full
// logits) of the same model and batch: loss and every trainable gradient agree to 1e-6, for
// chunk sizes that do and do not divide the token count, with tied and untied heads, alone and
// with gradient checkpointing.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <string>

#include "models/memory_test_util.h"
#include "models/checkpoint.h"
#include "models/chunked_loss.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

namespace peft {
namespace {

using test::source_path;

using RunResult = test::GradRun;

RunResult run(PeftModel& pm, PretrainedModel& base, const ModelInput& in, int64_t chunk, bool ckpt) {
  return test::run_with_memory_options(pm, base, in, {ckpt, chunk}, 3, [](const ModelOutput& o) { return o.loss; });
}

ModelInput batch(int64_t vocab) {
  torch::manual_seed(21);
  ModelInput in;
  in.input_ids = torch::randint(1, vocab, {3, 17}, torch::kLong);
  in.attention_mask = torch::ones({3, 17}, torch::kLong);
  in.attention_mask.index_put_({2, torch::indexing::Slice(11)}, 0);
  in.labels = in.input_ids.masked_fill(in.attention_mask == 0, -100);
  in.labels.index_put_({0, torch::indexing::Slice(0, 5)}, -100);  // a masked prompt
  return in;
}

struct Case {
  std::string name, model, method;  // method "full": every base parameter trains
  nlohmann::json options;
};

class ChunkedLoss : public ::testing::TestWithParam<Case> {};

TEST_P(ChunkedLoss, EqualsUnchunkedLossAndGradients) {
  const Case& c = GetParam();
  auto base = test::load_memory_test_model(c.model);
  auto pm = test::trainable_model(base, c.method, c.options);
  auto in = batch(base->dims().vocab_size);
  RunResult ref = run(*pm, *base, in, 0, false);
  ASSERT_TRUE(ref.has_logits);
  ASSERT_FALSE(ref.grads.empty());
  for (int64_t chunk : {1, 7, 16, 1000}) {
    for (bool ckpt : {false, true}) {
      RunResult r = run(*pm, *base, in, chunk, ckpt);
      SCOPED_TRACE("chunk " + std::to_string(chunk) + (ckpt ? " + checkpointing" : ""));
      EXPECT_FALSE(r.has_logits) << "training with a chunked loss holds no logits";
      // 1e-6 relative: the reference's float32 mean itself rounds by a few ulps of the loss.
      EXPECT_NEAR(r.loss, ref.loss, 1e-6 * std::max(1.0, std::abs(ref.loss)));
      ASSERT_EQ(r.grads.size(), ref.grads.size());
      for (auto& [name, g] : ref.grads) {
        ASSERT_TRUE(r.grads.count(name)) << name;
        // Summation order: the chunks' float32 gradient contributions add up in another order
        // (measured up to 1.9e-6 on stories260K with chunks of 1 token): 1e-5 of the gradient's scale.
        EXPECT_LE(test::max_diff(r.grads[name], g), 1e-5 * std::max(1.0, g.abs().max().item<double>())) << name;
      }
    }
  }
  // Evaluation needs logits: the chunked loss is off outside training.
  pm->eval();
  set_memory_options(*base, {false, 4});
  {
    torch::NoGradGuard ng;
    auto out = pm->forward(in);
    ASSERT_TRUE(out.logits.defined());
    EXPECT_NEAR(out.loss.item<double>(), ref.loss, 1e-5);  // (no dropout in these configs)
  }
  set_memory_options(*base, {});
}

INSTANTIATE_TEST_SUITE_P(Heads, ChunkedLoss,
                         ::testing::Values(Case{"stories_lora", "stories260K", "lora",
                                                {{"r", 4}, {"target_modules", {"q_proj", "v_proj"}}}},
                                           Case{"stories_full", "stories260K", "full", nullptr},
                                           Case{"llama_full", "llama", "full", nullptr},
                                           // an untied frozen lm_head: the fused form (frozen_head_chunked_loss)
                                           Case{"llama_lora", "llama", "lora",
                                                {{"r", 4}, {"target_modules", {"q_proj", "v_proj"}}}},
                                           Case{"llama_lora_head", "llama", "lora",
                                                {{"r", 4}, {"target_modules", {"q_proj", "lm_head"}}}},
                                           Case{"gpt2_full", "gpt2", "full", nullptr}),
                         [](const auto& info) { return info.param.name; });

// The function itself in float64 against causal_lm_loss, with an affine head and a tied matrix.
TEST(ChunkedLossFunction, MatchesCausalLmLossInFloat64) {
  torch::manual_seed(0);
  auto h = torch::randn({2, 9, 6}, torch::kDouble).requires_grad_(true);
  auto w = torch::randn({11, 6}, torch::kDouble).requires_grad_(true);
  auto E = torch::randn({11, 6}, torch::kDouble).requires_grad_(true);
  auto labels = torch::randint(0, 11, {2, 9}, torch::kLong);
  labels.index_put_({1, torch::indexing::Slice(6)}, -100);
  auto ref = causal_lm_loss(torch::matmul(h, w.t()) + torch::matmul(h, E.t()), labels);
  auto gref = torch::autograd::grad({ref}, {h, w, E});
  for (int64_t chunk : {1, 4, 16}) {
    auto got = chunked_causal_lm_loss(
        h, labels, chunk,
        [w](const torch::Tensor& x, const std::vector<torch::Tensor>& e) {
          return torch::matmul(x, w.t()) + torch::matmul(x, e[0].t());
        },
        {E}, {w});
    EXPECT_NEAR(got.item<double>(), ref.item<double>(), 1e-12);
    auto g = torch::autograd::grad({got}, {h, w, E});
    for (int i = 0; i < 3; ++i) EXPECT_LE(test::max_diff(g[i], gref[i]), 1e-12) << i;
  }
}

}  // namespace
}  // namespace peft
