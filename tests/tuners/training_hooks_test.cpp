// The training-time capabilities a tuner declares (include/peft/tuner.h; issue 18 item 1):
// loss_term (a term PeftModel::forward adds to the task loss of training forwards with labels,
// AdaMix's consistency loss) and prepare_training_config (what a run fills into the config:
// AdaLoRA's total_step, prompt tuning's TEXT init), also through a COMPOSITE; and innermost(),
// the one unwrap of stacked tuner layers.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using namespace peft::test;

namespace {

/// A tuner with no parameters whose loss term is `bonus` plus `again` times the mean logit of a
/// second forward: enough to see when the term is asked for and what it is given.
class LossTermProbe : public Tuner {
 public:
  std::string peft_type() const override { return "TEST_LOSS_TERM_PROBE"; }
  std::vector<ConfigField> fields() const override {
    return with_common({ConfigField{"bonus", FieldType::Number, 0.0, "a constant added to the loss"},
                        ConfigField{"again", FieldType::Number, 0.0, "weight of a second forward's mean logit"}},
                       {"task_type"});
  }
  bool targets_modules() const override { return false; }
  torch::Tensor loss_term(const nlohmann::json& c, const LossTermInput& in) const override {
    ++calls;
    EXPECT_TRUE(in.output.loss.defined());
    EXPECT_TRUE(in.input.labels.defined());
    auto t = torch::full({}, c["bonus"].get<double>(), in.output.loss.options());
    if (c["again"].get<double>() != 0) t = t + c["again"].get<double>() * in.forward_again().logits.mean();
    return t;
  }
  mutable int calls = 0;
};

std::shared_ptr<LossTermProbe> probe() {
  static auto p = [] {
    auto t = std::make_shared<LossTermProbe>();
    register_tuner(t);
    return t;
  }();
  return p;
}

}  // namespace

TEST(TrainingHooks, LossTermIsAddedToTrainingForwardsWithLabelsOnly) {
  auto tuner = probe();
  auto pm = fixture_peft_model("llama");
  auto in = fixture_input("llama");
  torch::NoGradGuard ng;
  const auto base = pm->model->forward(in);
  pm->add_adapter("default", {{"peft_type", "TEST_LOSS_TERM_PROBE"}, {"bonus", 0.25}, {"again", 2.0}});
  tuner->calls = 0;
  // Eval mode: no term.
  EXPECT_EQ(pm->forward(in).loss.item<double>(), base.loss.item<double>());
  EXPECT_EQ(tuner->calls, 0);
  // Training: loss + bonus + 2 * mean logit of a second forward (the fixture has no dropout, so
  // the second forward is the first).
  pm->train();
  auto out = pm->forward(in);
  EXPECT_EQ(tuner->calls, 1);
  const double want = base.loss.item<double>() + 0.25 + 2.0 * base.logits.mean().item<double>();
  EXPECT_NEAR(out.loss.item<double>(), want, 1e-6 * std::abs(want));
  EXPECT_TRUE(torch::equal(out.logits, base.logits));
  // No labels: no loss, no term.
  auto no_labels = in;
  no_labels.labels = torch::Tensor();
  EXPECT_FALSE(pm->forward(no_labels).loss.defined());
  EXPECT_EQ(tuner->calls, 1);
  // Disabled adapters: no term.
  pm->disable_adapters();
  EXPECT_EQ(pm->forward(in).loss.item<double>(), base.loss.item<double>());
  EXPECT_EQ(tuner->calls, 1);
}

// A COMPOSITE asks each component for its term (a LoRA component at init, the identity, has none).
TEST(TrainingHooks, CompositeAsksItsComponentsForLossTerms) {
  auto tuner = probe();
  auto pm = fixture_peft_model("llama");
  auto in = fixture_input("llama");
  torch::NoGradGuard ng;
  const double base = pm->model->forward(in).loss.item<double>();
  pm->add_adapter("default", {{"peft_type", "COMPOSITE"},
                              {"components", {method_config("lora"), {{"peft_type", "TEST_LOSS_TERM_PROBE"}, {"bonus", 0.5}}}}});
  pm->train();
  tuner->calls = 0;
  EXPECT_NEAR(pm->forward(in).loss.item<double>(), base + 0.5, 1e-6);
  EXPECT_EQ(tuner->calls, 1);
}

// AdaMix inside a COMPOSITE keeps its consistency term: at a fixed routing seed the term is
// linear in consistency_weight, L(w) - L(0) = w (L(1) - L(0)), and not zero.
TEST(TrainingHooks, AdaMixConsistencyTermThroughComposite) {
  auto pm = fixture_peft_model("llama");
  pm->add_adapter("default", {{"peft_type", "COMPOSITE"},
                              {"components", {method_config("adamix", {{"num_experts", 3}})}}});
  randomize(*pm, 0.3);
  pm->train();
  auto in = fixture_input("llama");
  torch::NoGradGuard ng;
  auto loss_at = [&](double w) {
    pm->mutable_config("default")["components"][0]["consistency_weight"] = w;
    torch::manual_seed(9);
    return pm->forward(in).loss.item<double>();
  };
  const double l0 = loss_at(0), l1 = loss_at(1), l3 = loss_at(3);
  EXPECT_GT(l1 - l0, 1e-4);
  EXPECT_NEAR(l3 - l0, 3 * (l1 - l0), 1e-5 * l3);
}

TEST(TrainingHooks, PrepareTrainingConfigFillsWhatTheRunKnows) {
  TrainingSetup setup;
  setup.total_steps = 37;
  setup.encode = [](const std::string& text) { return std::vector<int64_t>(text.size(), 7); };
  // AdaLoRA: total_step defaults to the run's length; a value the user set is kept.
  auto ada = method_config("adalora");
  find_tuner("ADALORA")->prepare_training_config(ada, setup);
  EXPECT_EQ(ada["total_step"], 37);
  auto ada_set = method_config("adalora", {{"total_step", 12}});
  find_tuner("ADALORA")->prepare_training_config(ada_set, setup);
  EXPECT_EQ(ada_set["total_step"], 12);
  // Prompt tuning's TEXT init: the run's tokenizer gives the ids; RANDOM init needs none.
  auto text = method_config("prompt-tuning", {{"prompt_tuning_init", "TEXT"}, {"prompt_tuning_init_text", "abc"}});
  find_tuner("PROMPT_TUNING")->prepare_training_config(text, setup);
  EXPECT_EQ(text["prompt_tuning_init_token_ids"], nlohmann::json({7, 7, 7}));
  auto random = method_config("prompt-tuning");
  find_tuner("PROMPT_TUNING")->prepare_training_config(random, setup);
  EXPECT_FALSE(random.contains("prompt_tuning_init_token_ids"));
  // Through a COMPOSITE: each component is prepared by its own tuner.
  nlohmann::json comp = {{"peft_type", "COMPOSITE"}, {"components", {method_config("adalora"), method_config("lora")}}};
  find_tuner("COMPOSITE")->prepare_training_config(comp, setup);
  EXPECT_EQ(comp["components"][0]["total_step"], 37);
  EXPECT_FALSE(comp["components"][1].contains("total_step"));
}

TEST(TrainingHooks, InnermostUnwrapsStackedTunerLayers) {
  auto pm = fixture_peft_model("llama");
  std::map<std::string, Layer*> before;
  for (auto& ref : find_slots(*pm->model)) before[ref.path] = ref.get().get();
  pm->add_adapter("a", method_config("lora", {{"target_modules", {"q_proj"}}}));
  pm->add_adapter("b", method_config("ia3", {{"target_modules", {"q_proj"}}, {"feedforward_modules", nlohmann::json::array()}}));
  int stacked = 0;
  for (auto& ref : find_slots(*pm->model)) {
    if (ref.path.find("q_proj") == std::string::npos || ref.path.find("base_layer") != std::string::npos) continue;
    Layer* top = ref.get().get();
    auto* outer = dynamic_cast<TunerLayer*>(top);
    ASSERT_NE(outer, nullptr) << ref.path;
    if (dynamic_cast<TunerLayer*>(outer->base_layer.get())) ++stacked;
    ASSERT_TRUE(before.count(ref.path)) << ref.path;
    EXPECT_EQ(innermost(top), before[ref.path]) << ref.path;
    EXPECT_EQ(innermost_linear(top), dynamic_cast<Linear*>(before[ref.path])) << ref.path;
    EXPECT_NE(innermost_linear(top), nullptr) << ref.path;
  }
  EXPECT_GT(stacked, 0) << "IA3 over LoRA should stack two wrappers";
  EXPECT_EQ(innermost(nullptr), nullptr);
}
