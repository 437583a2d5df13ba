// `peft convert`: the llama2.c stories260K checkpoint -> a Hugging Face folder that loads to
// the same model (bit-identical logits) and the same tokenizer (same ids).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tokenizer.h"
#include "test_util.h"

using namespace peft;
namespace fs = std::filesystem;

namespace {
torch::Tensor logits_of(const ModelPtr& m) {
  ModelInput mi;
  mi.input_ids = torch::tensor({{1, 203, 61, 178, 210, 85, 32, 2}, {1, 5, 90, 100, 42, 7, 0, 0}}, torch::kLong);
  mi.attention_mask = torch::tensor({{1, 1, 1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 0, 0}}, torch::kLong);
  torch::NoGradGuard ng;
  m->eval();
  return m->forward(mi).logits;
}
}  // namespace

TEST(ConvertCli, Stories260KToHuggingFaceFolder) {
  std::string src = test::source_path("assets/stories260K");
  std::string out = test::temp_dir("convert") + "/hf";
  std::string log;
  ASSERT_EQ(test::run_cli("convert --model " + src + " --out " + out, &log), 0) << log;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
    EXPECT_TRUE(fs::is_regular_file(fs::path(out) / f)) << f << "\n" << log;
  EXPECT_FALSE(fs::exists(fs::path(out) / "stories260K.bin"));

  auto orig = load_model(src), conv = load_model(out);
  EXPECT_EQ(conv->model_type(), "llama");
  EXPECT_TRUE(torch::equal(logits_of(orig), logits_of(conv)));
  EXPECT_EQ(load_safetensors(out + "/model.safetensors").count("lm_head.weight"), 0u);  // tied

  auto tok_orig = load_tokenizer(src), tok_conv = load_tokenizer(out);
  for (const char* s : {"Once upon a time, there was a little girl named Lily.",
                        "She said: \"Let's play!\" and ran to the park 42 times."}) {
    EXPECT_EQ(tok_conv->encode(s), tok_orig->encode(s)) << s;
    EXPECT_EQ(tok_conv->decode(tok_conv->encode(s)), s);
  }
  EXPECT_EQ(tok_conv->bos_id, 1);
  EXPECT_EQ(tok_conv->eos_id, 2);
}

TEST(ConvertCli, HuggingFaceFolderShardedAndHalf) {
  std::string src = test::source_path("tests/fixtures/hf/models/gpt2");
  std::string out = test::temp_dir("convert_gpt2");
  std::string log;
  ASSERT_EQ(test::run_cli("convert --model " + src + " --out " + out + " --max-shard-size 100000", &log), 0) << log;
  EXPECT_TRUE(fs::is_regular_file(out + "/model.safetensors.index.json")) << log;
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(out + "/generation_config.json"));
  auto a = load_checkpoint_dir(src), b = load_checkpoint_dir(out);
  ASSERT_EQ(a.size(), b.size());
  for (auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << k;
  EXPECT_TRUE(torch::equal(logits_of(load_model(src)), logits_of(load_model(out))));

  // bfloat16 into the same folder: the stale shards are replaced by one model.safetensors.
  ASSERT_EQ(test::run_cli("convert --model " + src + " --out " + out + " --dtype bf16", &log), 0) << log;
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
  auto c = load_checkpoint_dir(out);
  EXPECT_EQ(c.at("transformer.wte.weight").scalar_type(), torch::kBFloat16);
  EXPECT_EQ(read_json(out + "/config.json")["torch_dtype"], "bfloat16");
}

TEST(ConvertCli, ErrorsNameThePath) {
  std::string log;
  EXPECT_NE(test::run_cli("convert --model /nonexistent/m --out " + test::temp_dir("convert_bad"), &log), 0);
  EXPECT_NE(log.find("/nonexistent/m"), std::string::npos) << log;
  std::string src = test::source_path("tests/fixtures/hf/models/gpt2");
  EXPECT_NE(test::run_cli("convert --model " + src + " --out " + src, &log), 0);
  EXPECT_NE(log.find("source folder"), std::string::npos) << log;
}
