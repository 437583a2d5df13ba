// Seq2seq end to end: `peft train` on a tiny T5 with real En-Ro pairs (assets/mt, see its
// SOURCE.md) logs BLEU/chrF of generated translations at every evaluation and lowers the loss;
// `peft eval --metrics bleu,chrf` translates with greedy and beam search. No pretrained T5 is
// available here: the model is created from a config, with the 400-piece SentencePiece-style
// Unigram tokenizer.json of tests/fixtures/tokenizers/unigram (T5 layout: `$A </s>`).
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

std::string tiny_t5(bool v1_1) {
  auto dir = temp_dir(v1_1 ? "mt_t5v11" : "mt_t5");
  nlohmann::json cfg = {{"architectures", {"T5ForConditionalGeneration"}},
                        {"model_type", "t5"},
                        {"vocab_size", 400},
                        {"d_model", 32},
                        {"d_kv", 16},
                        {"d_ff", 64},
                        {"num_layers", 2},
                        {"num_decoder_layers", 2},
                        {"num_heads", 2},
                        {"relative_attention_num_buckets", 8},
                        {"relative_attention_max_distance", 32},
                        {"feed_forward_proj", v1_1 ? "gated-gelu" : "relu"},
                        {"tie_word_embeddings", !v1_1},
                        {"layer_norm_epsilon", 1e-6},
                        {"pad_token_id", 0},
                        {"eos_token_id", 1},
                        {"decoder_start_token_id", 0}};
  torch::manual_seed(11);
  auto m = create_model(cfg);
  m->save_pretrained(dir);
  fs::copy_file(source_path("tests/fixtures/tokenizers/unigram/tokenizer.json"), dir + "/tokenizer.json");
  return dir;
}

}  // namespace

class MtCli : public ::testing::TestWithParam<bool> {};

TEST_P(MtCli, TrainLogsBleuChrfAndEvalTranslates) {
  auto model = tiny_t5(GetParam());
  auto out = temp_dir("mt_run") + "/run";
  const std::string test_file = source_path("assets/mt/newstest2016-en-ro/test.jsonl");
  std::string log;
  int rc = run_cli("train --model " + model + " --train " + source_path("assets/mt/tatoeba-en-ro/train.jsonl") +
                       " --eval " + test_file +
                       " --method lora --r 8 --target_modules q,k,v,o,wo --max_length 48 --max_target_length 48"
                       " --max_steps 40 --per_device_train_batch_size 16 --learning_rate 1e-2"
                       " --eval_steps 20 --logging_steps 10 --generation_max_length 12 --generation_max_examples 16"
                       " --progress false --output-dir " + out,
                   &log);
  ASSERT_EQ(rc, 0) << log;
  std::vector<double> losses;
  std::vector<nlohmann::json> evals;
  for (auto& r : read_jsonl(out + "/metrics.jsonl")) {
    if (r.contains("loss")) losses.push_back(r["loss"].get<double>());
    if (r.contains("eval_loss")) evals.push_back(r);
  }
  ASSERT_EQ(losses.size(), 4u) << log;
  EXPECT_LT(losses.back(), losses.front() - 0.1) << log;
  ASSERT_EQ(evals.size(), 2u) << log;  // step 20 and the final one
  for (auto& e : evals) {
    for (const char* k : {"eval_bleu", "eval_chrf", "eval_perplexity"}) {
      ASSERT_TRUE(e.contains(k)) << k << " " << e.dump();
      double v = e[k].get<double>();
      EXPECT_TRUE(std::isfinite(v) && v >= 0) << k << " " << v;
    }
    EXPECT_EQ(e["eval_generated"], 16);
  }
  EXPECT_LT(evals.back()["eval_loss"].get<double>(), evals.front()["eval_loss"].get<double>() + 1e-9);
  EXPECT_EQ(read_json(out + "/adapter_config.json")["task_type"], "SEQ_2_SEQ_LM");

  // peft eval: greedy and beam search with the adapter.
  for (const std::string beams : {"1", "3"}) {
    std::string eo;
    rc = run_cli("eval --model " + model + " --adapter " + out + " --data " + test_file +
                     " --metrics bleu,chrf,loss --max_examples 6 --max_new_tokens 10 --num_beams " + beams +
                     " --length_penalty 0.8 --show 1",
                 &eo);
    ASSERT_EQ(rc, 0) << eo;
    auto j = nlohmann::json::parse(eo.substr(eo.rfind("\n{") + 1));
    for (const char* k : {"bleu", "chrf", "loss"}) EXPECT_TRUE(j.contains(k)) << k << " " << eo;
    EXPECT_EQ(j["generated"], 6);
  }
}

INSTANTIATE_TEST_SUITE_P(T5, MtCli, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? std::string("v1_1") : std::string("original"); });

// Ladder side-tuning on T5 (the decoder laddered): trains, generates during evaluation (cached
// decoding through the side network) and translates with `peft eval` from the saved adapter.
TEST(MtCli, T5TrainsWithLst) {
  auto model = tiny_t5(true);
  auto out = temp_dir("mt_lst") + "/run";
  const std::string test_file = source_path("assets/mt/newstest2016-en-ro/test.jsonl");
  std::string log;
  int rc = run_cli("train --model " + model + " --train " + source_path("assets/mt/tatoeba-en-ro/train.jsonl") +
                       " --eval " + test_file +
                       " --method lst --reduction_factor 2 --max_length 48 --max_target_length 48"
                       " --max_steps 40 --per_device_train_batch_size 16 --learning_rate 1e-2"
                       " --eval_steps 40 --logging_steps 10 --generation_max_length 8 --generation_max_examples 8"
                       " --progress false --output-dir " + out,
                   &log);
  ASSERT_EQ(rc, 0) << log;
  std::vector<double> losses;
  nlohmann::json last_eval;
  for (auto& r : read_jsonl(out + "/metrics.jsonl")) {
    if (r.contains("loss")) losses.push_back(r["loss"].get<double>());
    if (r.contains("eval_loss")) last_eval = r;
  }
  ASSERT_EQ(losses.size(), 4u) << log;
  EXPECT_LT(losses.back(), losses.front() - 0.1) << log;
  ASSERT_TRUE(last_eval.contains("eval_bleu")) << log;
  EXPECT_EQ(last_eval["eval_generated"], 8);
  EXPECT_EQ(read_json(out + "/adapter_config.json")["peft_type"], "LST");
  auto w = load_safetensors(out + "/adapter_model.safetensors");
  EXPECT_EQ(w.at("base_model.model.decoder.final_layer_norm.lst_down.weight").sizes(), torch::IntArrayRef({3, 16, 32}));
  std::string eo;
  rc = run_cli("eval --model " + model + " --adapter " + out + " --data " + test_file +
                   " --metrics bleu,loss --max_examples 4 --max_new_tokens 8",
               &eo);
  ASSERT_EQ(rc, 0) << eo;
  auto j = nlohmann::json::parse(eo.substr(eo.rfind("\n{") + 1));
  EXPECT_EQ(j["generated"], 4);
}

TEST(MtCli, BeamSearchOnDecoderOnlyIsAClearError) {
  std::string out;
  int rc = run_cli("eval --model " + source_path("assets/stories260K") + " --data " +
                       source_path("assets/mt/newstest2016-en-ro/test.jsonl") +
                       " --metrics bleu --num_beams 2 --max_examples 1",
                   &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("encoder-decoder"), std::string::npos) << out;
}
