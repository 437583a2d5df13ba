// Continuous batching's numerics: one decode step over sequences of different lengths, stacked
// left-padded with their own positions (serve/batch_cache.h), gives each row what the sequence
// alone gives (logits and extended cache), on Llama and GPT-2; and the per-row-adapter forward
// (PeftModel::forward(in, row_adapters)) over Python peft's two LoRA adapters gives each row what
// its adapter alone gives.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/model.h"
#include "peft/tuner.h"
#include "serve/batch_cache.h"
#include "serve/row_forward.h"
#include "test_util.h"

using namespace peft;
using peft::test::source_path;

namespace {

struct Alone {
  KVCache cache;
  torch::Tensor logits;  // of the step
};

// Prefills `prompt` alone, then feeds `next` alone: the reference for the batched step.
Alone run_alone(const std::function<ModelOutput(const ModelInput&)>& fwd, const std::vector<int64_t>& prompt, int64_t next,
                KVCache* prefilled) {
  Alone a;
  ModelInput in;
  in.input_ids = torch::tensor(prompt, torch::kLong).unsqueeze(0);
  in.cache = &a.cache;
  fwd(in);
  *prefilled = a.cache;  // shallow: tensors are replaced, not modified, by the next forward
  ModelInput step;
  step.input_ids = torch::tensor({next}, torch::kLong).view({1, 1});
  step.cache = &a.cache;
  a.logits = fwd(step).logits[0][-1];
  return a;
}

void check_batched_step(const std::string& model_dir, int64_t vocab) {
  torch::NoGradGuard ng;
  torch::manual_seed(3);
  auto model = load_model(model_dir);
  model->eval();
  auto fwd = [&](const ModelInput& in) { return model->forward(in); };
  const std::vector<int64_t> lens = {3, 9, 1, 6};
  std::vector<KVCache> caches(lens.size());
  std::vector<Alone> alone;
  std::vector<int64_t> next;
  for (size_t i = 0; i < lens.size(); ++i) {
    auto ids = torch::randint(3, vocab, {lens[i]}, torch::kLong);
    std::vector<int64_t> prompt(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + lens[i]);
    next.push_back(5 + static_cast<int64_t>(i));
    alone.push_back(run_alone(fwd, prompt, next.back(), &caches[i]));
  }
  std::vector<const KVCache*> in_caches;
  std::vector<KVCache*> out_caches;
  for (auto& c : caches) in_caches.push_back(&c), out_caches.push_back(&c);
  auto st = serve::stack_caches(in_caches);
  EXPECT_EQ(st.maxlen, 9);
  ModelInput in;
  in.input_ids = torch::tensor(next, torch::kLong).view({4, 1});
  in.attention_mask = st.attention_mask;
  in.position_ids = st.position_ids;
  in.cache = &st.cache;
  auto logits = model->forward(in).logits;
  serve::split_caches(st, out_caches);
  for (size_t i = 0; i < lens.size(); ++i) {
    EXPECT_TRUE(torch::allclose(logits[i][0], alone[i].logits, 1e-5, 1e-5))
        << model_dir << " row " << i << ": max diff " << (logits[i][0] - alone[i].logits).abs().max().item<double>();
    ASSERT_EQ(caches[i].length(), lens[i] + 1);
    for (size_t l = 0; l < caches[i].k.size(); ++l) {
      EXPECT_TRUE(torch::allclose(caches[i].k[l], alone[i].cache.k[l], 1e-5, 1e-6)) << "row " << i << " layer " << l;
      EXPECT_TRUE(torch::allclose(caches[i].v[l], alone[i].cache.v[l], 1e-5, 1e-6)) << "row " << i << " layer " << l;
    }
  }
}

}  // namespace

TEST(ServeBatch, StackedStepEqualsEachSequenceAloneLlama) { check_batched_step(source_path("assets/stories260K"), 512); }

TEST(ServeBatch, StackedStepEqualsEachSequenceAloneGpt2) {
  check_batched_step(source_path("tests/fixtures/wave2/models/gpt2"), 256);
}

TEST(ServeBatch, MaskAndPositionsOfTheStackedCache) {
  KVCache a, b;
  a.k = {torch::ones({1, 2, 2, 4})};
  a.v = {torch::ones({1, 2, 2, 4})};
  b.k = {torch::full({1, 2, 5, 4}, 2.0)};
  b.v = {torch::full({1, 2, 5, 4}, 2.0)};
  auto st = serve::stack_caches({&a, &b});
  EXPECT_TRUE(torch::equal(st.attention_mask, torch::tensor({0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1}, torch::kLong).view({2, 6})));
  EXPECT_TRUE(torch::equal(st.position_ids, torch::tensor({2, 5}, torch::kLong).view({2, 1})));
  ASSERT_EQ(st.cache.k[0].sizes(), (std::vector<int64_t>{2, 2, 5, 4}));
  EXPECT_EQ(st.cache.k[0][0].slice(1, 0, 3).abs().sum().item<double>(), 0.0);  // padding
  EXPECT_TRUE(torch::equal(st.cache.k[0][0].slice(1, 3), torch::ones({2, 2, 4})));
  EXPECT_THROW(serve::stack_caches({}), Error);
}

// What the engine runs per step: sequences of different lengths, each with its own adapter (or
// none), prefilled alone, then one stacked step through PeftModel::forward(in, row_adapters);
// each row equals its sequence run alone with its adapter active (Python peft's LoRA fixtures).
TEST(ServeBatch, StackedStepWithPerRowAdaptersEqualsEachAdapterAlone) {
  torch::NoGradGuard ng;
  auto pm = std::make_shared<PeftModel>(load_model(source_path("tests/fixtures/wave2/models/llama")));
  pm->load_adapter(source_path("tests/fixtures/wave2/adapters/llama/multi_a"), "a");
  pm->load_adapter(source_path("tests/fixtures/wave2/adapters/llama/multi_b"), "b");
  pm->eval();
  const std::vector<std::string> adapters = {"a", serve::kBaseAdapter, "b", "a"};
  const std::vector<int64_t> lens = {4, 7, 2, 5};
  torch::manual_seed(4);
  std::vector<KVCache> caches(4);
  std::vector<Alone> alone;
  std::vector<int64_t> next;
  for (size_t i = 0; i < 4; ++i) {
    auto alone_fwd = [&](const ModelInput& in) {
      if (adapters[i] == serve::kBaseAdapter) {
        pm->disable_adapters(true);
        auto o = pm->forward(in);
        pm->disable_adapters(false);
        return o;
      }
      pm->set_adapter(adapters[i]);
      return pm->forward(in);
    };
    auto ids = torch::randint(3, 256, {lens[i]}, torch::kLong);
    std::vector<int64_t> prompt(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + lens[i]);
    next.push_back(10 + static_cast<int64_t>(i));
    alone.push_back(run_alone(alone_fwd, prompt, next.back(), &caches[i]));
  }
  std::vector<const KVCache*> in_caches;
  std::vector<KVCache*> out_caches;
  for (auto& c : caches) in_caches.push_back(&c), out_caches.push_back(&c);
  auto st = serve::stack_caches(in_caches);
  ModelInput in;
  in.input_ids = torch::tensor(next, torch::kLong).view({4, 1});
  in.attention_mask = st.attention_mask;
  in.position_ids = st.position_ids;
  in.cache = &st.cache;
  auto logits = pm->forward(in, adapters).logits;
  serve::split_caches(st, out_caches);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_TRUE(torch::allclose(logits[i][0], alone[i].logits, 1e-5, 1e-5))
        << "row " << i << " (" << adapters[i] << "): max diff " << (logits[i][0] - alone[i].logits).abs().max().item<double>();
    for (size_t l = 0; l < caches[i].k.size(); ++l)
      EXPECT_TRUE(torch::allclose(caches[i].k[l], alone[i].cache.k[l], 1e-5, 1e-6)) << "row " << i << " layer " << l;
  }
}
