// Greedy generation on the bundled stories260K against llama2.c's published output
// (llama2.c doc/stories260K.md, quoted in assets/stories260K/SOURCE.md): "Once upon a time,
// there was a little girl named Lily. She loved to play outside in the park. One day, she saw
// a big, red ball."
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "cli/wave2_tokenizer.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tokenizer.h"
#include "test_util.h"

TEST(GenerateCli, GreedyStories260KMatchesLlama2cPublishedText) {
  std::string out;
  int rc = peft::test::run_cli("generate --model " + peft::test::source_path("assets/stories260K") +
                                   " --prompt 'Once upon a time' --max-new-tokens 40 --temperature 0",
                               &out);
  ASSERT_EQ(rc, 0) << out;
  const std::string expect =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw "
      "a big, red ball.";
  EXPECT_EQ(out.substr(0, expect.size()), expect) << out;
}

TEST(GenerateCli, MissingModelIsAClearError) {
  std::string out;
  int rc = peft::test::run_cli("generate --model /nonexistent/model --prompt hi", &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("/nonexistent/model"), std::string::npos) << out;
}

// ---- the continuation keeps its spaces (sentencepiece / llama2.c rule) --------------------------
// A SentencePiece piece written "▁word" (llama2.c: " word") decodes with its space unless it is
// the first piece of the text or comes right after BOS. The printed continuation of a prompt is
// therefore prompt + the pieces as they are. Expected texts are built from the pieces by that
// rule, never from peft.cpp's decoder.
namespace {
const std::string kSpm = "\xE2\x96\x81";  // "▁"

// Text of `piece` after a non-BOS token: "▁" -> " ", byte pieces <0xAB> -> the byte.
std::string piece_text(const std::string& piece) {
  if (piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>')
    return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
  std::string out;
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpm.size(), kSpm) == 0) {
      out += ' ';
      i += kSpm.size();
    } else {
      out += piece[i++];
    }
  }
  return out;
}

// Greedy ids after `prompt` (KV cache, argmax), stopping at EOS.
std::vector<int64_t> greedy_ids(peft::PretrainedModel& m, std::vector<int64_t> prompt, int64_t n, int64_t eos) {
  torch::NoGradGuard ng;
  peft::KVCache cache;
  std::vector<int64_t> out;
  auto input = torch::tensor(prompt, torch::kLong).unsqueeze(0);
  for (int64_t i = 0; i < n; ++i) {
    peft::ModelInput mi;
    mi.input_ids = input;
    mi.cache = &cache;
    int64_t next = m.forward(mi).logits[0][-1].argmax().item<int64_t>();
    if (next == eos) break;
    out.push_back(next);
    input = torch::tensor({next}, torch::kLong).unsqueeze(0);
  }
  return out;
}
}  // namespace

TEST(GenerateCli, Stories260KContinuationKeepsItsLeadingSpace) {
  const std::string dir = peft::test::source_path("assets/stories260K");
  const std::string prompt = "The little dog was sad because";
  auto model = peft::load_model(dir);
  model->eval();
  auto tok = peft::load_tokenizer(dir);  // what `peft generate` loads
  auto ids = greedy_ids(*model, tok->encode(prompt, true), 12, tok->eos_id);
  ASSERT_FALSE(ids.empty());
  std::string expect = prompt;
  for (int64_t id : ids) expect += piece_text(tok->id_to_token(id));
  std::string out;
  ASSERT_EQ(peft::test::run_cli("generate --model " + dir + " --prompt '" + prompt + "' --max-new-tokens 12 --temperature 0",
                                &out),
            0)
      << out;
  auto at = out.find(prompt);
  ASSERT_NE(at, std::string::npos) << out;
  EXPECT_EQ(out.substr(at), expect + "\n");
  EXPECT_NE(out.find("because he"), std::string::npos) << out;
  EXPECT_EQ(out.find("becausehe"), std::string::npos) << out;
}

// The wave-2 greedy ids of transformers (generation/llama, models/llama) through the CLI with a
// word-level SentencePiece-style tokenizer (piece "▁w<id>" for id >= 3, Metaspace decoder): the
// printed text is the prompt and then " w<id>" for each of transformers' generated ids.
TEST(GenerateCli, WaveTwoGreedyIdsPrintWithTheirSpaces) {
  auto tdir = peft::test::temp_dir("gen_wordlevel");
  peft::test::write_wave2_wordlevel_tokenizer(tdir);
  auto ref = peft::load_safetensors(peft::test::source_path("tests/fixtures/wave2/generation/llama/reference.safetensors"));
  auto seq = ref.at("base.sequences");
  const int64_t prompt_len = 6;
  int checked = 0;
  for (int64_t r = 0; r < seq.size(0); ++r) {
    std::string prompt, expect;
    bool plain = true;
    for (int64_t j = 1; j < seq.size(1); ++j) {
      int64_t id = seq[r][j].item<int64_t>();
      plain = plain && id >= 3;
      (j < prompt_len ? prompt : expect) += (j == 1 ? "w" : " w") + std::to_string(id);
    }
    if (!plain) continue;
    std::string out;
    ASSERT_EQ(peft::test::run_cli("generate --model " +
                                      peft::test::source_path("tests/fixtures/wave2/models/llama") + " --tokenizer " +
                                      tdir + " --prompt '" + prompt + "' --max-new-tokens 10 --temperature 0",
                                  &out),
              0)
        << out;
    auto at = out.find(prompt);
    ASSERT_NE(at, std::string::npos) << out;
    EXPECT_EQ(out.substr(at), prompt + expect + "\n") << "row " << r;
    ++checked;
  }
  EXPECT_GE(checked, 2);
}

// A mixed-adapter batch through the CLI (--adapter NAME=DIR, --row_adapters): each row prints
// peft's greedy ids of generate(adapter_names=["b", "__base__", "a"]) (wave2 generation/llama).
TEST(GenerateCli, RowAdaptersPrintPeftsMixedBatch) {
  auto tdir = peft::test::temp_dir("gen_mixed");
  peft::test::write_wave2_wordlevel_tokenizer(tdir);
  const std::string w2 = peft::test::source_path("tests/fixtures/wave2/");
  auto ref = peft::load_safetensors(w2 + "generation/llama/reference.safetensors");
  auto seq = ref.at("mixed.sequences");
  std::string args = "generate --model " + w2 + "models/llama --tokenizer " + tdir + " --adapter a=" + w2 +
                     "adapters/llama/multi_a --adapter b=" + w2 + "adapters/llama/multi_b --row_adapters b,__base__,a " +
                     "--max-new-tokens 10 --temperature 0";
  std::vector<std::string> prompts, expect;
  for (int64_t r = 0; r < seq.size(0); ++r) {
    std::string prompt, cont;
    for (int64_t j = 1; j < seq.size(1); ++j)
      (j < 6 ? prompt : cont) += (j == 1 ? "w" : " w") + std::to_string(seq[r][j].item<int64_t>());
    args += " --prompt '" + prompt + "'";
    prompts.push_back(prompt);
    expect.push_back(prompt + cont);
  }
  std::string out;
  ASSERT_EQ(peft::test::run_cli(args, &out), 0) << out;
  const std::vector<std::string> names = {"b", "__base__", "a"};
  for (size_t r = 0; r < names.size(); ++r)
    EXPECT_NE(out.find("[" + names[r] + "] " + expect[r] + "\n"), std::string::npos) << "row " << r << ":\n" << out;
  // An unknown row name and a prompt count that does not match are refused before any work.
  EXPECT_NE(peft::test::run_cli("generate --model " + w2 + "models/llama --tokenizer " + tdir + " --adapter a=" + w2 +
                                    "adapters/llama/multi_a --row_adapters a,c --prompt w5",
                                &out),
            0);
  EXPECT_NE(out.find("'c' is not an adapter name"), std::string::npos) << out;
  EXPECT_NE(peft::test::run_cli("generate --model " + w2 + "models/llama --tokenizer " + tdir + " --adapter a=" + w2 +
                                    "adapters/llama/multi_a --row_adapters a,a,a --prompt w5 --prompt w6",
                                &out),
            0);
  EXPECT_NE(out.find("give one prompt"), std::string::npos) << out;
}
