// Decoding a continuation (decode_continuation, StreamDecoder with a context) against
// libsentencepiece's Decode of the whole sequence (tests/fixtures/tokenizers/spm_reference.json):
// for every reference string and every split point k, the text of ids[0, k) followed by the
// continuation ids[k, n) equals the reference text of all n ids, so the first continued piece
// keeps its leading space. After a lone BOS the first piece drops it (the sentencepiece /
// llama2.c rule).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "peft/tokenizer.h"
#include "test_util.h"

namespace {
using nlohmann::json;
std::string fx(const std::string& rel) { return peft::test::source_path("tests/fixtures/tokenizers/" + rel); }

const json& spm_ref() {
  static json j = [] {
    std::ifstream f(fx("spm_reference.json"));
    return json::parse(f);
  }();
  return j;
}

struct Case {
  std::string file, reference;
};
}  // namespace

class Continuation : public ::testing::TestWithParam<Case> {};

TEST_P(Continuation, SplitDecodingEqualsLibsentencepieceWholeDecode) {
  const auto& c = GetParam();
  auto tok = peft::load_tokenizer_file(fx(c.file));
  int checked = 0, spaced = 0;
  for (const auto& r : spm_ref().at(c.reference)) {
    std::vector<int64_t> ids = r.at("ids").get<std::vector<int64_t>>();
    const std::string whole = r.at("decoded");
    if (ids.size() < 2 || tok->decode(ids) != whole) continue;  // strings the decoder differs on are other tests' business
    auto byte_piece = [&](int64_t id) { return tok->id_to_token(id).rfind("<0x", 0) == 0; };
    for (size_t k = 1; k < ids.size(); ++k) {
      if (byte_piece(ids[k - 1]) || byte_piece(ids[k])) continue;  // not inside a byte-fallback character
      std::vector<int64_t> head(ids.begin(), ids.begin() + k), tail(ids.begin() + k, ids.end());
      const std::string before = tok->decode(head);
      ASSERT_EQ(whole.compare(0, before.size(), before), 0) << c.file << " " << json(whole).dump();
      const std::string want = whole.substr(before.size());
      EXPECT_EQ(peft::decode_continuation(*tok, head, tail), want) << c.file << " k=" << k << " " << json(whole).dump();
      peft::StreamDecoder sd(*tok, head);
      std::string streamed;
      for (int64_t id : tail) streamed += sd.push(id);
      EXPECT_EQ(streamed, want) << c.file << " k=" << k << " " << json(whole).dump();
      spaced += !want.empty() && want[0] == ' ';
    }
    // Right after BOS the first piece loses its space: the continuation of [BOS] is the text.
    EXPECT_EQ(peft::decode_continuation(*tok, {tok->bos_id}, ids), whole) << c.file;
    ++checked;
  }
  EXPECT_GT(checked, 10) << c.file;
  EXPECT_GT(spaced, 10) << c.file;  // continuations that start with a space were exercised
}

INSTANTIATE_TEST_SUITE_P(All, Continuation,
                         ::testing::Values(Case{"stories260K/tok512.model", "stories260K/tok512.model"},
                                           Case{"stories260K/tok512.bin", "stories260K/tok512.model"},
                                           Case{"llama2/tokenizer.model", "llama2/tokenizer.model"},
                                           Case{"llama2/tokenizer.bin", "llama2/tokenizer.model"}),
                         [](const auto& info) {
                           std::string n = info.param.file;
                           for (auto& ch : n)
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });
