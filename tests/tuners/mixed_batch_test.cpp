// Mixed-adapter batches (PeftModel::forward(in, row_adapters), peft's adapter_names=): peft
// 0.13.2's recorded logits and greedy generation (tests/fixtures/wave2 README sections 4 and 5),
// every row against the same row run with its adapter alone, the methods that refuse, and
// delete_adapter.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/generate.h"
#include "tuners/wave2_util.h"

namespace peft::test {
namespace {

PeftModelPtr llama_with_a_b() {
  auto pm = wave2_peft_model("llama");
  pm->load_adapter(wave2_path("adapters/llama/multi_a"), "a");
  pm->load_adapter(wave2_path("adapters/llama/multi_b"), "b");
  return pm;
}

/// Row i of `got` equals row i of the whole batch run with row_adapters[i] active alone.
void expect_rows_equal_single_runs(PeftModel& pm, const ModelInput& in, const std::vector<std::string>& rows,
                                   const torch::Tensor& got, double atol) {
  for (size_t i = 0; i < rows.size(); ++i) {
    torch::Tensor want;
    if (rows[i] == PeftModel::kBaseRow) {
      pm.disable_adapters(true);
      want = pm.forward(in).logits[i];
      pm.disable_adapters(false);
    } else {
      pm.set_adapter(rows[i]);
      want = pm.forward(in).logits[i];
    }
    EXPECT_TRUE(torch::allclose(got[i], want, 0, atol))
        << "row " << i << " (" << rows[i] << "): max |diff| " << (got[i] - want).abs().max().item<double>();
  }
}

TEST(MixedBatch, LogitsEqualPeftsAdapterNames) {
  auto pm = llama_with_a_b();
  auto ref = load_safetensors(wave2_path("multi/llama/reference.safetensors"));
  torch::NoGradGuard ng;
  auto in = wave2_input("llama");
  in.labels = torch::Tensor();
  const std::vector<std::string> rows = {"b", PeftModel::kBaseRow, "a"};
  auto got = pm->forward(in, rows).logits;
  expect_logits_close(got, ref.at("mixed.logits"), "mixed");
  expect_rows_equal_single_runs(*pm, in, rows, got, 1e-6);
  // Both adapters active together is another computation (fixture both_active): the mixed
  // forward left no state behind.
  pm->set_adapter(std::vector<std::string>{"a", "b"});
  expect_logits_close(pm->forward(in).logits, ref.at("both_active.logits"), "both_active after mixed");
}

TEST(MixedBatch, UnequalRanksTakeTheGroupedPath) {
  // a (r 4) and c (r 2) cannot be gathered into one stack: one product per adapter instead.
  auto pm = llama_with_a_b();
  pm->load_adapter(wave2_path("adapters/llama/multi_c_r2"), "c");
  torch::NoGradGuard ng;
  auto in = wave2_input("llama");
  for (const std::vector<std::string>& rows : {std::vector<std::string>{"a", "c", PeftModel::kBaseRow},
                                               std::vector<std::string>{"c", "b", "a"},
                                               std::vector<std::string>{"a", "a", "a"}})
    expect_rows_equal_single_runs(*pm, in, rows, pm->forward(in, rows).logits, 1e-6);
}

TEST(MixedBatch, GreedyGenerationEqualsPeft) {
  auto pm = llama_with_a_b();
  auto ref = load_safetensors(wave2_path("generation/llama/reference.safetensors"));
  auto in = load_safetensors(wave2_path("generation/llama/inputs.safetensors"));
  torch::NoGradGuard ng;
  auto ids = in.at("input_ids");
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t r = 0; r < ids.size(0); ++r) {
    auto row = ids[r].contiguous();
    prompts.emplace_back(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
  }
  const std::vector<std::string> rows = {"b", PeftModel::kBaseRow, "a"};
  SamplingOptions so;
  so.max_new_tokens = 10;
  so.eos_token_id = 2;
  auto gen = at::detail::createCPUGenerator(0);
  auto res = generate_causal([&](const ModelInput& mi) { return pm->forward(mi, rows); }, prompts, so, gen);
  auto want = ref.at("mixed.sequences");
  for (int64_t r = 0; r < ids.size(0); ++r) {
    auto seq = prompts[r];
    seq.insert(seq.end(), res.tokens[r].begin(), res.tokens[r].end());
    auto w = want[r].contiguous();
    EXPECT_EQ(seq, std::vector<int64_t>(w.data_ptr<int64_t>(), w.data_ptr<int64_t>() + w.numel())) << "row " << r;
  }
  ASSERT_EQ(res.scores.sizes(), ref.at("mixed.scores").sizes());
  EXPECT_TRUE(torch::allclose(res.scores, ref.at("mixed.scores"), 0, 1e-4))
      << "max |diff| " << (res.scores - ref.at("mixed.scores")).abs().max().item<double>();
}

TEST(MixedBatch, LeftPaddedPromptsGenerateAsAlone) {
  auto pm = llama_with_a_b();
  torch::NoGradGuard ng;
  const std::vector<std::vector<int64_t>> prompts = {{1, 151, 57}, {1, 32, 71, 16, 90, 77}, {1, 19, 56, 90}};
  const std::vector<std::string> rows = {"a", "b", PeftModel::kBaseRow};
  SamplingOptions so;
  so.max_new_tokens = 8;
  auto gen = at::detail::createCPUGenerator(0);
  auto batch = generate_causal([&](const ModelInput& mi) { return pm->forward(mi, rows); }, prompts, so, gen);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto alone = generate_causal([&](const ModelInput& mi) { return pm->forward(mi, {rows[i]}); }, {prompts[i]}, so, gen);
    EXPECT_EQ(batch.tokens[i], alone.tokens[0]) << "row " << i;
    EXPECT_TRUE(torch::allclose(batch.scores.select(1, i), alone.scores.select(1, 0), 0, 1e-5)) << "row " << i;
  }
}

TEST(MixedBatch, LoraIa3VeraAndModulesToSaveRows) {
  auto pm = wave2_peft_model("llama");
  pm->add_adapter("lora", method_config("lora", {{"init_lora_weights", false}, {"target_modules", "all-linear"}}));
  pm->add_adapter("ia3", method_config("ia3", {{"init_ia3_weights", false}}));
  pm->add_adapter("vera", method_config("vera", {{"r", 4}, {"d_initial", 0.5}}));
  pm->add_adapter("dora", method_config("dora", {{"init_lora_weights", false}}));
  {  // VeRA's b starts at 0: give it a value so the rows differ from the base
    torch::NoGradGuard ng;
    for (auto& [path, t] : pm->tuner_layers())
      if (t->has_param("vera", "vera_lambda_b")) t->param("vera", "vera_lambda_b").uniform_(0.5, 1.5);
  }
  pm->eval();
  torch::NoGradGuard ng;
  auto in = wave2_input("llama");
  const std::vector<std::string> rows = {"ia3", "lora", "vera"};
  auto got = pm->forward(in, rows).logits;
  expect_rows_equal_single_runs(*pm, in, rows, got, 1e-6);
  const std::vector<std::string> rows2 = {"dora", PeftModel::kBaseRow, "ia3"};
  auto got2 = pm->forward(in, rows2).logits;
  expect_rows_equal_single_runs(*pm, in, rows2, got2, 1e-6);
  pm->disable_adapters(true);
  auto base = pm->forward(in).logits;
  pm->disable_adapters(false);
  for (int64_t i : {0, 2}) EXPECT_GT((got2[i] - base[i]).abs().max().item<double>(), 1e-3) << "row " << i << " unchanged";
}

TEST(MixedBatch, BottleneckAdapterRows) {
  auto pm = wave2_peft_model("llama");
  pm->add_adapter("houlsby", method_config("houlsby", {{"init_weights", false}}));
  pm->add_adapter("parallel", method_config("parallel-adapter", {{"init_weights", false}}));
  pm->add_adapter("lora", method_config("lora", {{"init_lora_weights", false}}));
  pm->eval();
  torch::NoGradGuard ng;
  auto in = wave2_input("llama");
  const std::vector<std::string> rows = {"parallel", "houlsby", "lora"};
  expect_rows_equal_single_runs(*pm, in, rows, pm->forward(in, rows).logits, 1e-6);
}

TEST(MixedBatch, GradientsReachOnlyEachRowsAdapter) {
  // Training through a mixed batch: adapter a's gradient is the gradient of the loss restricted to
  // a's rows (the other rows do not depend on it).
  auto pm = wave2_peft_model("llama");
  pm->add_adapter("a", method_config("lora", {{"init_lora_weights", false}}));
  pm->add_adapter("b", method_config("lora", {{"init_lora_weights", false}}));
  pm->set_adapter(std::vector<std::string>{"a", "b"});  // both trainable
  auto in = wave2_input("llama");
  const std::vector<std::string> rows = {"a", "b", "a"};
  auto logits = pm->forward(in, rows).logits;
  auto per_row = logits.pow(2).sum({1, 2});  // a loss that separates by row
  auto grads = torch::autograd::grad({per_row.sum()}, {pm->tuner_layers()[0].second->param("a", "lora_A.weight")},
                                     {}, /*retain_graph=*/true);
  auto rows_a = per_row.index_select(0, torch::tensor({0, 2}));
  auto grads_a = torch::autograd::grad({rows_a.sum()}, {pm->tuner_layers()[0].second->param("a", "lora_A.weight")});
  EXPECT_TRUE(torch::allclose(grads[0], grads_a[0], 1e-5, 1e-6));
  EXPECT_GT(grads[0].abs().max().item<double>(), 0);
}

TEST(MixedBatch, BadInputIsRefusedAndNothingChanges) {
  auto pm = llama_with_a_b();
  pm->add_adapter("adapter", method_config("bitfit", {{"add_missing_biases", true}}));
  // A gated prefix (UniPELT's) gates every query of the batch; plain soft prompts share batches
  // (tests/tuners/row_prompts_test.cpp).
  pm->add_adapter("prompt", method_config("prefix-tuning", {{"num_virtual_tokens", 4}, {"prefix_gate", true}}));
  torch::NoGradGuard ng;
  auto in = wave2_input("llama");
  pm->set_adapter("a");
  auto before = pm->forward(in).logits;
  auto expect_error = [&](const std::vector<std::string>& rows, const std::string& needle) {
    try {
      pm->forward(in, rows);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({"a", "nope", "b"}, "'nope', which is not loaded");
  expect_error({"a", "b"}, "names 2 adapters for a batch of 3 rows");
  expect_error({"a", "adapter", "b"}, "cannot act on some rows only");
  expect_error({"prompt", "a", "b"}, "cannot act on some rows only");
  EXPECT_TRUE(torch::equal(pm->forward(in).logits, before));
  for (auto& [path, t] : pm->tuner_layers()) EXPECT_FALSE(t->in_mixed_batch()) << path;
  pm->merge();
  expect_error({"a", "b", "a"}, "is merged into");
}

TEST(MixedBatch, DeleteAdapterRemovesItsTensorsAndWrappers) {
  auto pm = llama_with_a_b();
  torch::NoGradGuard ng;
  auto in = wave2_input("llama");
  pm->set_adapter("b");
  auto only_b = pm->forward(in).logits;
  pm->delete_adapter("a");
  EXPECT_THROW(pm->adapter("a"), Error);
  for (auto& p : pm->named_parameters()) EXPECT_EQ(p.key().find(".a."), std::string::npos) << p.key();
  EXPECT_TRUE(torch::equal(pm->forward(in).logits, only_b));
  EXPECT_EQ(pm->active_adapters(), std::vector<std::string>{"b"});
  pm->delete_adapter("b");
  for (auto& p : pm->named_parameters()) EXPECT_EQ(p.key().find("base_layer"), std::string::npos) << p.key();
  EXPECT_TRUE(pm->tuner_layers().empty());
  auto base = wave2_peft_model("llama");
  EXPECT_TRUE(torch::equal(pm->forward(in).logits, base->forward(in).logits));
  pm->load_adapter(wave2_path("adapters/llama/multi_a"), "a");  // the name can be used again
  pm->set_adapter("a");
  auto ref = llama_with_a_b();
  ref->set_adapter("a");
  EXPECT_TRUE(torch::equal(pm->forward(in).logits, ref->forward(in).logits));
  pm->merge();
  EXPECT_THROW(pm->delete_adapter("a"), Error);
}

}  // namespace
}  // namespace peft::test
