// LoRAHub (include/peft/lorahub.h) and its CMA-ES (src/tuners/cma_es.h): the optimiser against
// closed-form minima, the composition against its formula (A = sum w_i A_i, B = sum w_i B_i), the
// search recovering a known mixture, refusals, and `peft combine --search lorahub` end to end.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "cli/wave2_tokenizer.h"
#include "peft/error.h"
#include "peft/lorahub.h"
#include "tuners/cma_es.h"
#include "tuners/wave2_util.h"

namespace peft::test {
namespace {

TEST(CmaEs, FindsTheMinimumOfAnIllConditionedQuadratic) {
  // f(x) = sum_i 10^(i) (x_i - c_i)^2: minimum 0 at c.
  const std::vector<double> c = {0.7, -0.3, 0.2};
  auto f = [&](const std::vector<double>& x) {
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) s += std::pow(10.0, double(i)) * (x[i] - c[i]) * (x[i] - c[i]);
    return s;
  };
  CmaOptions o;
  o.budget = 800;
  o.seed = 3;
  auto r = cma_es_minimize(f, {0, 0, 0}, o);
  for (size_t i = 0; i < c.size(); ++i) EXPECT_NEAR(r.best_x[i], c[i], 1e-3) << "dim " << i;
  EXPECT_LT(r.best_f, 1e-6);
  EXPECT_EQ(r.evaluations, 800);
  for (size_t i = 1; i < r.best_so_far.size(); ++i) EXPECT_LE(r.best_so_far[i], r.best_so_far[i - 1]);
  // Same seed, same search; the box bound holds the optimum outside it at the bound.
  auto again = cma_es_minimize(f, {0, 0, 0}, o);
  EXPECT_EQ(r.best_x, again.best_x);
  o.lower = -0.1;
  o.upper = 0.5;
  auto boxed = cma_es_minimize(f, {0, 0, 0}, o);
  EXPECT_NEAR(boxed.best_x[0], 0.5, 1e-4);
  EXPECT_NEAR(boxed.best_x[1], -0.1, 1e-4);
  EXPECT_NEAR(boxed.best_x[2], 0.2, 1e-3);
}

PeftModelPtr llama_with_a_b() {
  auto pm = wave2_peft_model("llama");
  pm->load_adapter(wave2_path("adapters/llama/multi_a"), "a");
  pm->load_adapter(wave2_path("adapters/llama/multi_b"), "b");
  return pm;
}

TEST(LoraHub, ComposesFactorsAndRecoversAKnownMixture) {
  auto pm = llama_with_a_b();
  auto in = wave2_input("llama");
  in.labels = torch::Tensor();
  // Target: the logits of the composition at w* = (0.8, -0.5); loss = mean squared distance.
  const std::vector<double> w_star = {0.8, -0.5};
  pm->add_adapter("target", pm->adapter("a").config);
  lorahub_compose(*pm, {"a", "b"}, w_star, "target");
  for (auto& [path, t] : pm->tuner_layers()) {  // the composition is the formula, module by module
    if (!t->has_param("target", "lora_A.weight")) continue;
    for (const char* k : {"lora_A.weight", "lora_B.weight"})
      EXPECT_TRUE(torch::allclose(t->param("target", k), 0.8 * t->param("a", k) - 0.5 * t->param("b", k), 0, 1e-7))
          << path << " " << k;
  }
  torch::Tensor want;
  {
    torch::NoGradGuard ng;
    pm->set_adapter("target");
    want = pm->forward(in).logits.clone();
  }
  pm->delete_adapter("target");
  pm->set_adapter("a");
  auto loss = [&] {
    torch::NoGradGuard ng;
    return (pm->forward(in).logits - want).pow(2).mean().item<double>();
  };
  LoraHubOptions o;
  o.budget = 120;
  o.l1 = 0;
  o.seed = 1;
  auto r = lorahub_search(*pm, {"a", "b"}, "hub", loss, o);
  ASSERT_EQ(r.weights.size(), 2u);
  EXPECT_NEAR(r.weights[0], 0.8, 0.05);
  EXPECT_NEAR(r.weights[1], -0.5, 0.05);
  EXPECT_LT(r.loss, 1e-4);
  EXPECT_EQ(r.evaluations, 120);
  EXPECT_EQ(pm->active_adapters(), std::vector<std::string>{"a"});  // restored
  pm->set_adapter("hub");
  EXPECT_NEAR(loss(), r.loss, 1e-9);  // the best composition is left in place
  // The L1 term pulls the weights toward 0: the objective is loss + l1 |w|_1 at the result.
  o.l1 = 0.05;
  pm->set_adapter("a");
  auto r2 = lorahub_search(*pm, {"a", "b"}, "hub_l1", loss, o);
  EXPECT_NEAR(r2.objective, r2.loss + 0.05 * (std::abs(r2.weights[0]) + std::abs(r2.weights[1])), 1e-12);
  EXPECT_LT(std::abs(r2.weights[0]) + std::abs(r2.weights[1]), 1.3 + 1e-9 + 0.05);
}

TEST(LoraHub, RefusesAdaptersThatCannotBeSummed) {
  auto pm = llama_with_a_b();
  pm->load_adapter(wave2_path("adapters/llama/multi_c_r2"), "c");
  pm->add_adapter("ia3", method_config("ia3"));
  auto loss = [] { return 0.0; };
  auto expect_error = [&](const std::vector<std::string>& names, const std::string& needle) {
    try {
      lorahub_search(*pm, names, "hub", loss);
      ADD_FAILURE() << "no error for " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_FALSE(pm->adapters().count("hub")) << "left an adapter behind";
  };
  expect_error({"a", "c"}, "every module needs the same rank");
  expect_error({"a", "ia3"}, "LoRAHub composes LoRA");
  expect_error({"a", "nope"}, "no adapter named 'nope'");
  expect_error({}, "no adapters");
}

TEST(LoraHub, CombineCliSearchesAndWritesTheAdapter) {
  auto dir = temp_dir("lorahub_cli");
  write_wave2_wordlevel_tokenizer(dir);
  {
    std::ofstream ex(dir + "/examples.jsonl");
    for (auto* line : {"w5 w6 w7 w8 w9", "w10 w11 w12 w13", "w20 w21 w22 w23 w24 w25"})
      ex << "{\"text\": \"" << line << "\"}\n";
  }
  const std::string w2 = source_path("tests/fixtures/wave2/");
  std::string out;
  ASSERT_EQ(run_cli("combine --search lorahub --model " + w2 + "models/llama --tokenizer " + dir + " --adapter a=" + w2 +
                        "adapters/llama/multi_a --adapter b=" + w2 + "adapters/llama/multi_b --examples " + dir +
                        "/examples.jsonl --budget 12 --seed 4 --out " + dir + "/hub",
                    &out),
            0)
      << out;
  auto rep = read_json(dir + "/hub/lorahub.json");
  ASSERT_TRUE(rep["weights"].contains("a") && rep["weights"].contains("b")) << rep.dump();
  EXPECT_EQ(rep["evaluations"], 12);
  // The saved adapter is the composition at the reported weights.
  auto pm = llama_with_a_b();
  pm->load_adapter(dir + "/hub", "hub");
  const double wa = rep["weights"]["a"].get<double>(), wb = rep["weights"]["b"].get<double>();
  for (auto& [path, t] : pm->tuner_layers()) {
    if (!t->has_param("hub", "lora_A.weight")) continue;
    for (const char* k : {"lora_A.weight", "lora_B.weight"})
      EXPECT_TRUE(torch::allclose(t->param("hub", k), wa * t->param("a", k) + wb * t->param("b", k), 1e-6, 1e-6))
          << path << " " << k;
  }
  // The objective the search reports is never worse than its start (w = 0: the base).
  EXPECT_LE(rep["objective"].get<double>(), rep["best_objective"][0].get<double>());
  EXPECT_NE(run_cli("combine --search lorahub --model " + w2 + "models/llama --adapter a=" + w2 +
                        "adapters/llama/multi_a --out " + dir + "/x",
                    &out),
            0);
  EXPECT_NE(out.find("--examples FILE"), std::string::npos) << out;
}

}  // namespace
}  // namespace peft::test
