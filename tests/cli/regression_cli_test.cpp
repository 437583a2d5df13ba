// Regression heads (num_labels 1 / problem_type regression) through the CLI: `peft forward` takes
// float labels and reproduces transformers' MSE loss (wave-2 fixture roberta_reg, base and with
// peft's LoRA adapter); `peft train` / `peft eval` read real-valued labels of a classification
// file on such a model without extra flags and report mse / pearson / spearman.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "peft/io.h"
#include "peft/report.h"
#include "test_util.h"

using namespace peft;
using peft::test::run_cli;
using peft::test::source_path;
using peft::test::temp_dir;
namespace fs = std::filesystem;

namespace {
std::string wave2(const std::string& rel) { return source_path("tests/fixtures/wave2/" + rel); }

// A word-level tokenizer whose ids fit the fixture's 256-token vocabulary, in RoBERTa's layout
// (<s> 0, <pad> 1, </s> 2, <unk> 3; <s> text </s>).
void write_tokenizer(const std::string& dir, const std::vector<std::string>& words) {
  nlohmann::json vocab = {{"<s>", 0}, {"<pad>", 1}, {"</s>", 2}, {"<unk>", 3}};
  for (size_t i = 0; i < words.size(); ++i) vocab[words[i]] = 10 + static_cast<int64_t>(i);
  nlohmann::json added = nlohmann::json::array();
  for (auto& [t, id] : std::vector<std::pair<std::string, int>>{{"<s>", 0}, {"<pad>", 1}, {"</s>", 2}, {"<unk>", 3}})
    added.push_back({{"id", id}, {"content", t}, {"special", true}});
  nlohmann::json tok = {{"version", "1.0"},
                        {"added_tokens", added},
                        {"pre_tokenizer", {{"type", "WhitespaceSplit"}}},
                        {"post_processor",
                         {{"type", "RobertaProcessing"}, {"sep", {"</s>", 2}}, {"cls", {"<s>", 0}}}},
                        {"model", {{"type", "WordLevel"}, {"vocab", vocab}, {"unk_token", "<unk>"}}}};
  write_json(dir + "/tokenizer.json", tok);
}

double json_tail(const std::string& out, const std::string& key) {
  auto j = nlohmann::json::parse(out.substr(out.rfind("\n{") + 1));
  return j.at(key).get<double>();
}
}  // namespace

TEST(RegressionCli, ForwardTakesFloatLabelsAndMatchesTransformersLoss) {
  auto dir = temp_dir("reg_forward");
  const std::string in = wave2("models/roberta_reg/inputs.safetensors");
  std::string log;
  ASSERT_EQ(run_cli("forward --model " + wave2("models/roberta_reg") + " --inputs " + in + " --out " + dir + "/base.safetensors",
                    &log),
            0)
      << log;
  auto base = load_safetensors(dir + "/base.safetensors");
  auto ref = load_safetensors(wave2("models/roberta_reg/reference.safetensors"));
  EXPECT_NEAR(base.at("loss").item<double>(), ref.at("loss").item<double>(), 1e-5);
  EXPECT_TRUE(torch::allclose(base.at("logits"), ref.at("logits"), 1e-4, 1e-5));
  ASSERT_EQ(run_cli("forward --model " + wave2("models/roberta_reg") + " --adapter " + wave2("adapters/roberta_reg/lora") +
                        " --inputs " + in + " --out " + dir + "/lora.safetensors",
                    &log),
            0)
      << log;
  auto lora = load_safetensors(dir + "/lora.safetensors");
  auto lref = load_safetensors(wave2("adapters/roberta_reg/lora/reference.safetensors"));
  EXPECT_NEAR(lora.at("loss").item<double>(), lref.at("loss").item<double>(), 1e-5);
}

TEST(RegressionCli, FloatLabelsOnACausalLmAreAClearError) {
  auto dir = temp_dir("reg_forward_lm");
  auto in = load_safetensors(wave2("models/llama/inputs.safetensors"));
  in["labels"] = in.at("labels").to(torch::kFloat32);
  save_safetensors(dir + "/in.safetensors", in);
  std::string log;
  EXPECT_NE(run_cli("forward --model " + wave2("models/llama") + " --inputs " + dir + "/in.safetensors --out " + dir +
                        "/o.safetensors",
                    &log),
            0);
  EXPECT_NE(log.find("'labels'"), std::string::npos) << log;
  EXPECT_NE(log.find("regression"), std::string::npos) << log;
}

TEST(RegressionCli, TrainAndEvalReadRealValuedLabelsOfARegressionModel) {
  auto root = temp_dir("reg_train");
  const std::string model = root + "/model";
  fs::create_directories(model);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(wave2("models/roberta_reg/") + f, model + "/" + f);
  std::vector<std::string> words = {"good", "bad", "great", "awful", "fine", "movie", "plot", "actor", "very", "not"};
  write_tokenizer(model, words);
  // Real-valued scores (JSON numbers, not integers): the model's head is a regressor.
  const std::string data = root + "/data.jsonl";
  {
    std::ofstream f(data);
    const char* rows[][2] = {{"very good movie", "2.5"},  {"bad plot", "-1.25"},      {"great actor", "2.0"},
                             {"awful movie", "-2.0"},     {"fine plot", "0.5"},        {"not good", "-0.75"},
                             {"very great plot", "3.0"}, {"not awful actor", "0.25"}};
    for (auto& r : rows) f << "{\"text\": \"" << r[0] << "\", \"label\": " << r[1] << "}\n";
  }
  const std::string out = root + "/run";
  std::string log;
  ASSERT_EQ(run_cli("train --model " + model + " --train " + data + " --eval " + data +
                        " --method lora --r 4 --max_steps 6 --per_device_train_batch_size 4 --learning_rate 1e-2"
                        " --eval_steps 6 --logging_steps 2 --progress false --output-dir " + out,
                    &log),
            0)
      << log;
  nlohmann::json last_eval;
  for (auto& r : read_jsonl(out + "/metrics.jsonl"))
    if (r.contains("eval_loss")) last_eval = r;
  ASSERT_FALSE(last_eval.is_null()) << log;
  for (const char* k : {"eval_mse", "eval_pearson", "eval_spearman"}) ASSERT_TRUE(last_eval.contains(k)) << k << log;
  EXPECT_DOUBLE_EQ(last_eval["eval_mse"].get<double>(), last_eval["eval_loss"].get<double>());
  // `peft eval` with the trained adapter: the same MSE on the same rows.
  ASSERT_EQ(run_cli("eval --model " + model + " --adapter " + out + " --data " + data + " --metrics mse,pearson", &log), 0)
      << log;
  EXPECT_NEAR(json_tail(log, "mse"), last_eval["eval_mse"].get<double>(), 1e-5) << log;
  EXPECT_NEAR(json_tail(log, "pearson"), last_eval["eval_pearson"].get<double>(), 1e-5) << log;
}
