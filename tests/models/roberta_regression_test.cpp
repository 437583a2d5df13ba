// RoBERTa with a regression head (num_labels 1, problem_type regression) against the wave-2
// transformers 4.37.2 / peft 0.13.2 fixtures (tests/fixtures/wave2/models/roberta_reg and
// adapters/roberta_reg/lora; README sections 1 and 2): logits [B, 1], the MSE loss on float
// labels, and LoRA with the `classifier` head in modules_to_save, unmerged and merged.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"

using namespace peft;

namespace {
std::string wave2(const std::string& rel) { return test::source_path("tests/fixtures/wave2/" + rel); }

::testing::AssertionResult close(const torch::Tensor& a, const torch::Tensor& b, double atol = 1e-5, double rtol = 1e-4) {
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  auto diff = (a - b).abs();
  if ((diff <= atol + rtol * b.abs()).all().item<bool>()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs diff " << diff.max().item<double>();
}

ModelInput inputs(const std::string& suffix) {
  auto in = load_safetensors(wave2("models/roberta_reg/inputs" + suffix + ".safetensors"));
  ModelInput mi;
  mi.input_ids = in.at("input_ids");
  mi.attention_mask = in.at("attention_mask");
  mi.labels = in.at("labels");
  return mi;
}
}  // namespace

TEST(RobertaRegression, BaseMatchesTransformersWithFloatLabels) {
  auto model = load_model(wave2("models/roberta_reg"));
  model->eval();
  EXPECT_EQ(model->task(), TaskType::SeqCls);
  torch::NoGradGuard ng;
  for (std::string s : {"", "_single", "_long"}) {
    auto mi = inputs(s);
    ASSERT_TRUE(at::isFloatingType(mi.labels.scalar_type()));
    auto ref = load_safetensors(wave2("models/roberta_reg/reference" + s + ".safetensors"));
    auto out = model->forward(mi);
    EXPECT_TRUE(close(out.logits, ref.at("logits"))) << s;
    EXPECT_TRUE(close(out.loss, ref.at("loss"))) << s;
    // The loss is the MSE of the single output against the labels (closed form).
    auto mse = (out.logits.squeeze(-1) - mi.labels).pow(2).mean();
    EXPECT_NEAR(out.loss.item<double>(), mse.item<double>(), 1e-6) << s;
  }
}

TEST(RobertaRegression, PeftLoraWithClassifierCopyMatchesUnmergedAndMerged) {
  auto model = load_model(wave2("models/roberta_reg"));
  model->eval();
  auto pm = std::make_shared<PeftModel>(model);
  pm->load_adapter(wave2("adapters/roberta_reg/lora"));
  pm->eval();
  auto ref = load_safetensors(wave2("adapters/roberta_reg/lora/reference.safetensors"));
  torch::NoGradGuard ng;
  for (std::string s : {"", "_single"}) {
    auto out = pm->forward(inputs(s));
    EXPECT_TRUE(close(out.logits, ref.at("logits" + s))) << s;
    EXPECT_TRUE(close(out.loss, ref.at("loss" + s))) << s;
  }
  auto merged = pm->merge_and_unload();
  merged->eval();
  for (std::string s : {"", "_single"}) {
    auto out = merged->forward(inputs(s));
    EXPECT_TRUE(close(out.logits, ref.at("merged_logits" + s))) << s;
    EXPECT_TRUE(close(out.loss, ref.at("merged_loss" + s))) << s;
  }
}
