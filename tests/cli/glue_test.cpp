// Sequence classification end to end through `peft train` on real GLUE subsets
// (assets/glue, see its SOURCE.md). No pretrained encoder weights exist here, so each test
// builds a tiny randomly initialised model from a config (create_model + save_pretrained) with
// the real BERT WordPiece vocabulary (tests/fixtures/tokenizers/bert-base-uncased) and checks
// that the classification pipeline runs: the task head is created, trained as modules_to_save,
// the loss goes down and accuracy/F1/MCC (Pearson/Spearman for STS-B) reach metrics.jsonl.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/report.h"
#include "test_util.h"

using namespace peft;
using peft::test::run_cli;
using peft::test::source_path;
using peft::test::temp_dir;
namespace fs = std::filesystem;

namespace {

/// A tiny encoder saved as a Hugging Face folder with the BERT WordPiece tokenizer.
std::string tiny_encoder(const std::string& model_type, const std::string& tag) {
  auto dir = temp_dir(tag);
  nlohmann::json cfg = {{"architectures", {model_type == "roberta" ? "RobertaModel" : "BertModel"}},
                        {"model_type", model_type},
                        {"vocab_size", 30522},
                        {"hidden_size", 32},
                        {"intermediate_size", 64},
                        {"num_hidden_layers", 2},
                        {"num_attention_heads", 2},
                        {"max_position_embeddings", 130},
                        {"type_vocab_size", 2},
                        {"hidden_act", "gelu"},
                        {"layer_norm_eps", 1e-12},
                        // The WordPiece vocabulary pads with [PAD] = 0 (RoBERTa's own BPE uses 1).
                        {"pad_token_id", 0}};
  torch::manual_seed(7);
  auto m = create_model(cfg);
  {
    torch::NoGradGuard ng;
    for (auto& p : m->named_parameters())
      if (p.key().find("LayerNorm") == std::string::npos) p.value().normal_(0, 0.05);
  }
  m->save_pretrained(dir);
  fs::copy_file(source_path("tests/fixtures/tokenizers/bert-base-uncased/tokenizer.json"), dir + "/tokenizer.json");
  return dir;
}

struct Log {
  std::vector<double> losses;
  std::vector<nlohmann::json> evals;
};

Log read_log(const std::string& out) {
  Log l;
  for (auto& r : read_jsonl(out + "/metrics.jsonl")) {
    if (r.contains("loss")) l.losses.push_back(r["loss"].get<double>());
    if (r.contains("eval_loss")) l.evals.push_back(r);
  }
  return l;
}

double mean(const std::vector<double>& v, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; ++i) s += v[i];
  return s / double(to - from);
}

}  // namespace

TEST(GlueCli, BertSst2TrainsWithLoraAndLogsClassificationMetrics) {
  auto model = tiny_encoder("bert", "glue_bert");
  auto out = temp_dir("glue_sst2") + "/run";
  std::string log;
  int rc = run_cli("train --model " + model + " --train " + source_path("assets/glue/SST-2/train.tsv") + " --eval " +
                       source_path("assets/glue/SST-2/dev.tsv") +
                       " --csv_quoting false --text_column sentence --method lora --r 8 --max_length 48"
                       " --target_modules query,value,dense"
                       " --max_steps 60 --per_device_train_batch_size 16 --learning_rate 1e-2 --warmup_steps 0"
                       " --eval_steps 30 --logging_steps 10 --progress false --output-dir " + out,
                   &log);
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("modules_to_save"), std::string::npos) << log;  // the new head trains
  auto l = read_log(out);
  ASSERT_EQ(l.losses.size(), 6u) << log;
  EXPECT_LT(mean(l.losses, 4, 6), mean(l.losses, 0, 2)) << log;
  ASSERT_FALSE(l.evals.empty());
  for (const char* k : {"eval_accuracy", "eval_f1", "eval_mcc"}) {
    ASSERT_TRUE(l.evals.back().contains(k)) << k;
    double v = l.evals.back()[k].get<double>();
    EXPECT_TRUE(std::isfinite(v)) << k;
  }
  auto acc = l.evals.back()["eval_accuracy"].get<double>();
  EXPECT_GE(acc, 0.0);
  EXPECT_LE(acc, 1.0);
  // Saved as peft saves a SEQ_CLS adapter: the classifier copy is in the file.
  auto cfg = read_json(out + "/adapter_config.json");
  EXPECT_EQ(cfg["task_type"], "SEQ_CLS");
  EXPECT_EQ(cfg["modules_to_save"], nlohmann::json({"classifier"}));
  auto w = load_safetensors(out + "/adapter_model.safetensors");
  EXPECT_TRUE(w.count("base_model.model.classifier.weight"));
  EXPECT_TRUE(w.count("base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"));

  // peft eval on the bare encoder + this adapter: the head comes back from the adapter and
  // reproduces the final evaluation.
  std::string eo;
  rc = run_cli("eval --model " + model + " --adapter " + out + " --data " + source_path("assets/glue/SST-2/dev.tsv") +
                   " --csv_quoting false --text_column sentence --max_length 48 --metrics loss,accuracy,f1,mcc",
               &eo);
  ASSERT_EQ(rc, 0) << eo;
  auto j = nlohmann::json::parse(eo.substr(eo.rfind("\n{") + 1));
  EXPECT_NEAR(j["accuracy"].get<double>(), acc, 1e-9) << eo;
  EXPECT_NEAR(j["loss"].get<double>(), l.evals.back()["eval_loss"].get<double>(), 1e-4) << eo;

  // peft merge: a plain BertForSequenceClassification checkpoint with the trained head.
  auto merged = temp_dir("glue_merged") + "/m";
  rc = run_cli("merge --model " + model + " --adapter " + out + " --out " + merged, &eo);
  ASSERT_EQ(rc, 0) << eo;
  auto mcfg = read_json(merged + "/config.json");
  EXPECT_EQ(mcfg["architectures"][0], "BertForSequenceClassification");
  auto re = load_model(merged);
  EXPECT_EQ(re->task(), TaskType::SeqCls);
  EXPECT_TRUE(torch::equal(re->state_dict().at("classifier.weight"), w.at("base_model.model.classifier.weight")));
}

// Ladder side-tuning on a post-norm encoder: the side network (saved under the last block's
// output LayerNorm, which it adds to) and the new head train; `peft eval` reproduces the final
// evaluation from the saved adapter.
TEST(GlueCli, BertSst2TrainsWithLst) {
  auto model = tiny_encoder("bert", "glue_bert_lst");
  auto out = temp_dir("glue_sst2_lst") + "/run";
  std::string log;
  int rc = run_cli("train --model " + model + " --train " + source_path("assets/glue/SST-2/train.tsv") + " --eval " +
                       source_path("assets/glue/SST-2/dev.tsv") +
                       " --csv_quoting false --text_column sentence --method lst --reduction_factor 4 --max_length 48"
                       " --max_steps 40 --per_device_train_batch_size 16 --learning_rate 1e-2 --warmup_steps 0"
                       " --eval_steps 40 --logging_steps 10 --progress false --output-dir " + out,
                   &log);
  ASSERT_EQ(rc, 0) << log;
  EXPECT_NE(log.find("lst: "), std::string::npos) << log;
  auto l = read_log(out);
  ASSERT_EQ(l.losses.size(), 4u) << log;
  EXPECT_LT(mean(l.losses, 2, 4), mean(l.losses, 0, 2)) << log;
  ASSERT_FALSE(l.evals.empty());
  auto cfg = read_json(out + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "LST");
  EXPECT_EQ(cfg["modules_to_save"], nlohmann::json({"classifier"}));
  auto w = load_safetensors(out + "/adapter_model.safetensors");
  EXPECT_TRUE(w.count("base_model.model.classifier.weight"));
  EXPECT_EQ(w.at("base_model.model.bert.encoder.layer.1.output.LayerNorm.lst_down.weight").sizes(),
            torch::IntArrayRef({3, 32 / 4, 32}));
  std::string eo;
  rc = run_cli("eval --model " + model + " --adapter " + out + " --data " + source_path("assets/glue/SST-2/dev.tsv") +
                   " --csv_quoting false --text_column sentence --max_length 48 --metrics loss,accuracy",
               &eo);
  ASSERT_EQ(rc, 0) << eo;
  auto j = nlohmann::json::parse(eo.substr(eo.rfind("\n{") + 1));
  EXPECT_NEAR(j["accuracy"].get<double>(), l.evals.back()["eval_accuracy"].get<double>(), 1e-9) << eo;
  EXPECT_NEAR(j["loss"].get<double>(), l.evals.back()["eval_loss"].get<double>(), 1e-4) << eo;
}

TEST(GlueCli, RobertaStsbRegressionLogsPearsonSpearman) {
  auto model = tiny_encoder("roberta", "glue_roberta");
  auto out = temp_dir("glue_stsb") + "/run";
  std::string log;
  int rc = run_cli("train --model " + model + " --train " + source_path("assets/glue/STS-B/train.tsv") + " --eval " +
                       source_path("assets/glue/STS-B/dev.tsv") +
                       " --csv_quoting false --text_column sentence1 --text_pair_column sentence2"
                       " --label_column score --regression true --method lora --max_length 64"
                       " --max_steps 40 --per_device_train_batch_size 16 --learning_rate 5e-3"
                       " --eval_steps 20 --logging_steps 10 --progress false --output-dir " + out,
                   &log);
  ASSERT_EQ(rc, 0) << log;
  auto l = read_log(out);
  ASSERT_EQ(l.losses.size(), 4u) << log;
  // Regression from a random head: MSE against 0..5 scores falls quickly.
  EXPECT_LT(l.losses.back(), l.losses.front()) << log;
  ASSERT_FALSE(l.evals.empty());
  for (const char* k : {"eval_pearson", "eval_spearman"}) {
    ASSERT_TRUE(l.evals.back().contains(k)) << k;
    double v = l.evals.back()[k].get<double>();
    EXPECT_TRUE(std::isfinite(v) && v >= -1.0 && v <= 1.0) << k << " " << v;
  }
  // RoBERTa's composite head (dense + out_proj) is the adapter's trainable copy.
  auto w = load_safetensors(out + "/adapter_model.safetensors");
  for (const char* k : {"classifier.dense.weight", "classifier.out_proj.weight", "classifier.out_proj.bias"})
    EXPECT_TRUE(w.count(std::string("base_model.model.") + k)) << k;
  EXPECT_EQ(w.at("base_model.model.classifier.out_proj.weight").size(0), 1);  // one regression output
}

TEST(GlueCli, LlamaSst2UsesScoreHeadAndLastToken) {
  auto out = temp_dir("glue_llama") + "/run";
  std::string log;
  int rc = run_cli("train --model " + source_path("assets/stories260K") + " --train " +
                       source_path("assets/glue/SST-2/train.tsv") + " --eval " + source_path("assets/glue/SST-2/dev.tsv") +
                       " --csv_quoting false --text_column sentence --method lora --max_length 48"
                       " --max_steps 40 --per_device_train_batch_size 16 --learning_rate 5e-3"
                       " --eval_steps 20 --logging_steps 10 --progress false --output-dir " + out,
                   &log);
  ASSERT_EQ(rc, 0) << log;
  auto l = read_log(out);
  ASSERT_EQ(l.losses.size(), 4u) << log;
  EXPECT_LT(mean(l.losses, 2, 4), mean(l.losses, 0, 2)) << log;
  for (const char* k : {"eval_accuracy", "eval_f1", "eval_mcc"}) EXPECT_TRUE(l.evals.back().contains(k)) << k;
  auto w = load_safetensors(out + "/adapter_model.safetensors");
  EXPECT_TRUE(w.count("base_model.model.score.weight"));
}
