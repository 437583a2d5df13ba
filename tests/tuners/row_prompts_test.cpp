// Soft prompts in mixed-adapter batches (src/tuners/row_prompts.cpp): rows under prompt tuning,
// P-tuning and prefix tuning share a batch with LoRA rows and base rows. References: Python
// peft 0.13.2's recorded logits for each prompt adapter alone (tests/fixtures/peft), each row
// run with its adapter alone (prompts of different lengths: the pads are masked, positions are
// the row's own), greedy decoding through the single-adapter path, gradients per row; and the
// refusals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/generate.h"
#include "peft/io.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

namespace peft::test {
namespace {

std::string peft_adapter(const std::string& method) { return source_path("tests/fixtures/peft/adapters/llama/" + method); }

/// The fixture llama with peft's prompt-tuning, P-tuning and prefix-tuning adapters (4 virtual
/// tokens each) and peft's LoRA.
PeftModelPtr llama_with_prompts() {
  auto pm = fixture_peft_model("llama");
  for (const char* m : {"prompt_tuning", "p_tuning", "prefix_tuning", "lora"}) pm->load_adapter(peft_adapter(m), m);
  pm->eval();
  return pm;
}

/// Logits of the whole batch `in` with `adapter` alone (the base for "__base__").
torch::Tensor alone(PeftModel& pm, const std::string& adapter, const ModelInput& in) {
  torch::NoGradGuard ng;
  if (adapter == PeftModel::kBaseRow) {
    pm.disable_adapters(true);
    auto l = pm.forward(in).logits;
    pm.disable_adapters(false);
    return l;
  }
  pm.set_adapter(adapter);
  return pm.forward(in).logits;
}

TEST(RowPrompts, EachRowMatchesPeftsRecordedOutputForItsAdapter) {
  auto pm = llama_with_prompts();
  auto in = fixture_input("llama");
  in.labels = torch::Tensor();
  torch::NoGradGuard ng;
  // Two rows, each under another soft prompt of the same length: no padding, positions as alone.
  for (auto rows : {std::vector<std::string>{"prompt_tuning", "prefix_tuning"}, std::vector<std::string>{"prefix_tuning", "p_tuning"}}) {
    auto got = pm->forward(in, rows).logits;  // [2, 4 + T, V]: the virtual columns lead every row
    ASSERT_EQ(got.size(1), in.input_ids.size(1) + 4);
    for (int64_t i = 0; i < 2; ++i) {
      auto ref = load_safetensors(peft_adapter(rows[i]) + "/reference.safetensors").at("logits")[i];
      auto row = rows[i] == "prefix_tuning" ? got[i].slice(0, 4) : got[i];  // peft's prefix run has no virtual columns
      ASSERT_EQ(row.sizes(), ref.sizes()) << rows[i];
      EXPECT_TRUE(torch::allclose(row, ref, 1e-4, 1e-5)) << rows[i] << " row " << i << ": " << max_diff(row, ref);
    }
  }
}

TEST(RowPrompts, PromptsOfDifferentLengthsWithLoraAndBaseRowsEqualEachRowAlone) {
  auto pm = llama_with_prompts();
  pm->add_adapter("long_prompt", method_config("prompt-tuning", {{"num_virtual_tokens", 7}}));
  pm->add_adapter("short_prefix", method_config("prefix-tuning", {{"num_virtual_tokens", 2}}));
  pm->eval();
  auto in = fixture_input("llama");
  in.labels = torch::Tensor();
  // Four rows from the fixture's two.
  for (auto* t : {&in.input_ids, &in.attention_mask}) *t = torch::cat({*t, t->flip(0)}, 0);
  const int64_t T = in.input_ids.size(1), Pe = 7;
  for (auto rows : {std::vector<std::string>{"long_prompt", "short_prefix", "lora", PeftModel::kBaseRow},
                    std::vector<std::string>{"prompt_tuning", "long_prompt", "prefix_tuning", "short_prefix"},
                    std::vector<std::string>{"p_tuning", PeftModel::kBaseRow, "long_prompt", "prefix_tuning"}}) {
    torch::Tensor got;
    {
      torch::NoGradGuard ng;
      got = pm->forward(in, rows).logits;
    }
    ASSERT_EQ(got.size(1), Pe + T);
    for (size_t i = 0; i < rows.size(); ++i) {
      auto want = alone(*pm, rows[i], in)[i];  // [n + T, V] for virtual tokens, [T, V] otherwise
      auto row = got[i].slice(0, Pe + T - want.size(0));
      EXPECT_TRUE(torch::allclose(row, want, 1e-5, 1e-5)) << rows[i] << " row " << i << ": " << max_diff(row, want);
    }
  }
}

/// Greedy decoding of one prompt through the single-adapter path (no position ids, one cache).
std::vector<int64_t> greedy_alone(PeftModel& pm, const std::string& adapter, const std::vector<int64_t>& prompt,
                                  int64_t n, std::vector<torch::Tensor>* scores) {
  torch::NoGradGuard ng;
  if (adapter == PeftModel::kBaseRow) pm.disable_adapters(true);
  else pm.set_adapter(adapter);
  KVCache cache;
  auto input = torch::tensor(prompt, torch::kLong).unsqueeze(0);
  std::vector<int64_t> out;
  for (int64_t s = 0; s < n; ++s) {
    ModelInput mi;
    mi.input_ids = input;
    mi.cache = &cache;
    auto logits = pm.forward(mi).logits[0][-1];
    scores->push_back(logits);
    int64_t next = logits.argmax().item<int64_t>();
    out.push_back(next);
    input = torch::tensor({next}, torch::kLong).unsqueeze(0);
  }
  pm.disable_adapters(false);
  return out;
}

TEST(RowPrompts, LeftPaddedGreedyGenerationEqualsEachRowAlone) {
  auto pm = llama_with_prompts();
  pm->add_adapter("long_prompt", method_config("prompt-tuning", {{"num_virtual_tokens", 6}}));
  pm->eval();
  const std::vector<std::vector<int64_t>> prompts = {{1, 15, 27}, {1, 32, 71, 16, 90, 77}, {1, 19, 56, 90}, {1, 40},
                                                     {1, 8, 9, 10, 11}};
  const std::vector<std::string> rows = {"prompt_tuning", "prefix_tuning", PeftModel::kBaseRow, "long_prompt", "lora"};
  SamplingOptions so;
  so.max_new_tokens = 6;
  so.eos_token_id = -1;
  auto gen = at::detail::createCPUGenerator(0);
  torch::NoGradGuard ng;
  auto batch = generate_causal([&](const ModelInput& mi) { return pm->forward(mi, rows); }, prompts, so, gen);
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<torch::Tensor> scores;
    auto want = greedy_alone(*pm, rows[i], prompts[i], so.max_new_tokens, &scores);
    EXPECT_EQ(batch.tokens[i], want) << rows[i];
    for (size_t s = 0; s < scores.size() && s < (size_t)batch.scores.size(0); ++s)
      EXPECT_TRUE(torch::allclose(batch.scores[s][i], scores[s], 1e-4, 1e-5))
          << rows[i] << " step " << s << ": " << max_diff(batch.scores[s][i], scores[s]);
  }
}

TEST(RowPrompts, TrainingReachesEachRowsPromptOnly) {
  auto pm = fixture_peft_model("llama");
  pm->add_adapter("p", method_config("prompt-tuning", {{"num_virtual_tokens", 3}}));
  pm->add_adapter("x", method_config("prefix-tuning", {{"num_virtual_tokens", 5}}));
  pm->set_adapter(std::vector<std::string>{"p", "x"});  // both trainable
  pm->train();
  auto in = fixture_input("llama");
  for (auto* t : {&in.input_ids, &in.attention_mask, &in.labels}) *t = torch::cat({*t, t->flip(0)}, 0);
  const std::vector<std::string> rows = {"p", "x", "p", PeftModel::kBaseRow};
  auto out = pm->forward(in, rows);
  ASSERT_TRUE(out.loss.defined());
  EXPECT_TRUE(std::isfinite(out.loss.item<double>()));
  auto p_param = pm->adapter("p").input->parameters()[0], x_param = pm->adapter("x").input->parameters()[0];
  auto per_row = out.logits.pow(2).mean({1, 2});
  auto all = torch::autograd::grad({per_row.sum()}, {p_param, x_param}, {}, /*retain_graph=*/true);
  auto only_p = torch::autograd::grad({per_row.index_select(0, torch::tensor({0, 2})).sum()}, {p_param}, {}, true);
  auto only_x = torch::autograd::grad({per_row[1]}, {x_param}, {}, true);
  EXPECT_TRUE(torch::allclose(all[0], only_p[0], 1e-5, 1e-7)) << max_diff(all[0], only_p[0]);
  EXPECT_TRUE(torch::allclose(all[1], only_x[0], 1e-5, 1e-7)) << max_diff(all[1], only_x[0]);
  EXPECT_GT(all[0].abs().max().item<double>(), 0);
  EXPECT_GT(all[1].abs().max().item<double>(), 0);
  // The loss backpropagates through both prompts.
  out.loss.backward();
  EXPECT_TRUE(p_param.grad().defined() && x_param.grad().defined());
}

TEST(RowPrompts, RefusedWhereRowsCannotCarryTheirOwnPrompt) {
  auto expect_error = [](PeftModel& pm, const ModelInput& in, const std::vector<std::string>& rows, const std::string& needle) {
    torch::NoGradGuard ng;
    try {
      pm.forward(in, rows);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  {  // A gated prefix (UniPELT) gates every query of the batch.
    auto pm = fixture_peft_model("llama");
    pm->add_adapter("gated", method_config("prefix-tuning", {{"num_virtual_tokens", 3}, {"prefix_gate", true}}));
    auto in = fixture_input("llama");
    expect_error(*pm, in, {"gated", PeftModel::kBaseRow}, "cannot act on some rows only");
  }
  {  // An encoder model: a row's left pads would move its absolute positions.
    auto pm = fixture_peft_model("bert_cls");
    pm->load_adapter(source_path("tests/fixtures/peft/adapters/bert_cls/prompt_tuning"), "p");
    auto in = fixture_input("bert_cls");
    auto before = in.input_ids.clone();
    expect_error(*pm, in, {"p", PeftModel::kBaseRow}, "decoder-only causal LMs");
    EXPECT_TRUE(torch::equal(in.input_ids, before));
  }
}

}  // namespace
}  // namespace peft::test
