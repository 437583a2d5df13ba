// Tokenizer tests against independent references:
//  - gpt2_reference.json: tokenizers.js (@huggingface/tokenizers 0.2.0) on gpt2/tokenizer.json,
//    bert-base-uncased/tokenizer.json and unigram/tokenizer.json (see fixtures SOURCE.md);
//  - roberta_reference.json: tokenizers.js on a RoBERTa-layout byte-level BPE tokenizer;
//  - spm_reference.json: libsentencepiece (C++) on tok512.model, llama2 tokenizer.model and
//    unigram/spiece.model.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "peft/error.h"
#include "peft/tokenizer.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using peft::test::source_path;

namespace {

std::string fx(const std::string& rel) { return source_path("tests/fixtures/tokenizers/" + rel); }

json load_json(const std::string& rel) {
  std::ifstream f(fx(rel));
  return json::parse(f);
}

std::vector<int64_t> ids_of(const json& j) { return j.get<std::vector<int64_t>>(); }

const json& gpt2_ref() {
  static json j = load_json("gpt2_reference.json");
  return j;
}
const json& spm_ref() {
  static json j = load_json("spm_reference.json");
  return j;
}

// Checks encode against tokenizers.js for every reference string.
void check_hf_reference(const peft::Tokenizer& tok, const std::string& key, bool roundtrip) {
  const json& cases = gpt2_ref().at(key);
  ASSERT_GT(cases.size(), 20u);
  for (const auto& c : cases) {
    std::string text = c.at("text");
    EXPECT_EQ(tok.encode(text, false), ids_of(c.at("ids"))) << key << " text: " << json(text).dump();
    EXPECT_EQ(tok.encode(text, true), ids_of(c.at("ids_special"))) << key << " text: " << json(text).dump();
    if (roundtrip) EXPECT_EQ(tok.decode(tok.encode(text, true)), text) << key;
  }
}

// Checks encode (no specials) against libsentencepiece; `filter` skips strings.
void check_spm_reference(const peft::Tokenizer& tok, const std::string& model,
                         const std::function<bool(const std::string&)>& filter = nullptr,
                         bool check_decode = true) {
  const json& cases = spm_ref().at(model);
  int checked = 0;
  for (const auto& c : cases) {
    std::string text = c.at("text");
    if (filter && !filter(text)) continue;
    ++checked;
    auto ids = tok.encode(text, false);
    EXPECT_EQ(ids, ids_of(c.at("ids"))) << model << " text: " << json(text).dump();
    if (check_decode) EXPECT_EQ(tok.decode(ids), c.at("decoded").get<std::string>()) << model << " " << json(text).dump();
  }
  EXPECT_GT(checked, 10);
}

bool ordinary(const std::string& t) {
  // llama2.c does not collapse whitespace; tok512.model (remove_extra_whitespaces) does.
  if (t.empty() || t.front() == ' ' || t.back() == ' ') return false;
  return t.find("  ") == std::string::npos;
}

}  // namespace

TEST(TokenizerGpt2, MatchesTokenizersJs) {
  auto tok = peft::load_tokenizer_file(fx("gpt2/tokenizer.json"));
  EXPECT_EQ(tok->vocab_size(), 50257);
  EXPECT_EQ(tok->token_to_id("<|endoftext|>"), 50256);
  EXPECT_EQ(tok->eos_id, 50256);
  check_hf_reference(*tok, "gpt2/tokenizer.json", true);
  // Special token in text is matched before splitting.
  EXPECT_EQ(tok->encode("a<|endoftext|>b", false), (std::vector<int64_t>{64, 50256, 65}));
}

TEST(TokenizerGpt2, VocabJsonMergesFallbackMatches) {
  auto tok = peft::load_tokenizer_file(fx("gpt2/vocab.json"));
  check_hf_reference(*tok, "gpt2/tokenizer.json", true);
}

TEST(TokenizerBert, TokenizerJsonMatchesTokenizersJs) {
  auto tok = peft::load_tokenizer_file(fx("bert-base-uncased/tokenizer.json"));
  check_hf_reference(*tok, "bert-base-uncased/tokenizer.json", false);
  EXPECT_EQ(tok->decode(tok->encode("Hello, World! It's a test.")), "hello, world! it's a test.");
}

TEST(TokenizerBert, VocabTxtFallbackMatchesTokenizersJs) {
  auto tok = peft::load_tokenizer_file(fx("bert-base-uncased/vocab.txt"));
  EXPECT_EQ(tok->vocab_size(), 30522);
  EXPECT_EQ(tok->unk_id, 100);
  EXPECT_EQ(tok->pad_id, 0);
  check_hf_reference(*tok, "bert-base-uncased/tokenizer.json", false);
}

TEST(TokenizerBert, SentencePairTokenTypes) {
  const json& p = gpt2_ref().at("bert_pair");
  for (const char* f : {"bert-base-uncased/tokenizer.json", "bert-base-uncased/vocab.txt"}) {
    auto tok = peft::load_tokenizer_file(fx(f));
    std::vector<int64_t> types;
    EXPECT_EQ(tok->encode_pair(p.at("a"), p.at("b"), &types), ids_of(p.at("ids"))) << f;
    EXPECT_EQ(types, ids_of(p.at("token_type_ids"))) << f;
  }
}

// RoBERTa's byte-level BPE (roberta_reference.json from tokenizers.js, make_roberta_reference.mjs):
// GPT-2's vocabulary with RoBERTa's specials (<s>=0, <pad>=1, </s>=2, <unk>=3, tokens + 4,
// <mask> last), loaded from vocab.json + merges.txt and from a tokenizer.json in the layout of
// transformers' RobertaConverter.
TEST(TokenizerRoberta, VocabMergesAndTokenizerJsonMatchTokenizersJs) {
  const json ref = load_json("roberta_reference.json");
  json vocab = {{"<s>", 0}, {"<pad>", 1}, {"</s>", 2}, {"<unk>", 3}};
  const json gpt2 = load_json("gpt2/vocab.json");  // named: items() of a temporary would dangle
  for (auto& [t, id] : gpt2.items())
    if (t != "<|endoftext|>") vocab[t] = id.get<int64_t>() + 4;
  const int64_t mask = static_cast<int64_t>(vocab.size());
  ASSERT_EQ(mask, ref.at("mask_id").get<int64_t>());
  vocab["<mask>"] = mask;
  const std::string dir = peft::test::temp_dir("roberta_tok");
  std::ofstream(dir + "/vocab.json") << vocab.dump();
  fs::copy_file(fx("gpt2/merges.txt"), dir + "/merges.txt");

  json merges = json::array();
  {
    std::ifstream m(fx("gpt2/merges.txt"));
    std::string l;
    for (int i = 0; std::getline(m, l); ++i)
      if (!l.empty() && !(i == 0 && l.rfind("#version", 0) == 0)) merges.push_back(l);
  }
  auto sp = [](int64_t id, const char* c, bool lstrip) {
    return json{{"id", id}, {"content", c}, {"single_word", false}, {"lstrip", lstrip}, {"rstrip", false},
                {"normalized", false}, {"special", true}};
  };
  json tj = {{"added_tokens", {sp(0, "<s>", false), sp(1, "<pad>", false), sp(2, "</s>", false), sp(3, "<unk>", false),
                               sp(mask, "<mask>", true)}},
             {"normalizer", nullptr},
             {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
             {"post_processor", {{"type", "RobertaProcessing"}, {"sep", {"</s>", 2}}, {"cls", {"<s>", 0}},
                                 {"trim_offsets", true}, {"add_prefix_space", false}}},
             {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
             {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab}, {"merges", merges}}}};
  const std::string tjdir = peft::test::temp_dir("roberta_tokjson");
  std::ofstream(tjdir + "/tokenizer.json") << tj.dump();

  for (const std::string& d : {dir, tjdir}) {
    auto tok = peft::load_tokenizer(d);
    for (const auto& c : ref.at("singles")) {
      std::string text = c.at("text");
      EXPECT_EQ(tok->encode(text, false), ids_of(c.at("ids"))) << d << " " << json(text).dump();
      EXPECT_EQ(tok->encode(text, true), ids_of(c.at("ids_special"))) << d << " " << json(text).dump();
      EXPECT_EQ(tok->decode(tok->encode(text, true)), text) << d;
    }
    for (const auto& p : ref.at("pairs")) {
      std::vector<int64_t> types;
      auto ids = tok->encode_pair(p.at("a"), p.at("b"), &types);
      EXPECT_EQ(ids, ids_of(p.at("ids"))) << d << " " << p.at("a");
      // RoBERTa has one token type: transformers does not pass token_type_ids to it
      // (model_input_names), so every type is 0 here where tokenizers.js numbers the segments.
      EXPECT_EQ(types, std::vector<int64_t>(ids.size(), 0)) << d;
    }
  }
}

TEST(TokenizerUnigram, TokenizerJsonMatchesTokenizersJsAndSentencepiece) {
  auto tok = peft::load_tokenizer_file(fx("unigram/tokenizer.json"));
  check_hf_reference(*tok, "unigram/tokenizer.json", false);
  // HF's Metaspace does not prepend ▁ to text that already starts with a space (sentencepiece
  // always adds its dummy prefix), so those strings differ by design.
  check_spm_reference(*tok, "unigram/spiece.model", [](const std::string& t) { return t.empty() || t[0] != ' '; },
                      false);
}

TEST(TokenizerUnigram, SpieceModelMatchesSentencepiece) {
  auto tok = peft::load_tokenizer_file(fx("unigram/spiece.model"));
  check_spm_reference(*tok, "unigram/spiece.model");
}

TEST(TokenizerSentencePiece, Tok512ModelMatchesLibsentencepiece) {
  auto tok = peft::load_tokenizer_file(fx("stories260K/tok512.model"));
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->eos_id, 2);
  check_spm_reference(*tok, "stories260K/tok512.model");
}

TEST(TokenizerSentencePiece, Llama2ModelMatchesLibsentencepiece) {
  auto tok = peft::load_tokenizer_file(fx("llama2/tokenizer.model"));
  EXPECT_EQ(tok->vocab_size(), 32000);
  check_spm_reference(*tok, "llama2/tokenizer.model");
  auto ids = tok->encode("Hello", true);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids.front(), 1);
}

TEST(TokenizerLlama2c, Tok512MatchesLibsentencepiece) {
  auto tok = peft::load_tokenizer_file(fx("stories260K/tok512.bin"));
  EXPECT_EQ(tok->vocab_size(), 512);
  check_spm_reference(*tok, "stories260K/tok512.model", ordinary);
  // With BOS (llama2.c's run.c: BOS only, never EOS).
  auto ids = tok->encode("Once upon a time", true);
  auto spm = peft::load_tokenizer_file(fx("stories260K/tok512.model"))->encode("Once upon a time", true);
  EXPECT_EQ(ids, spm);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(tok->decode(ids), "Once upon a time");
  EXPECT_EQ(tok->decode(ids, false).substr(0, 3), "<s>");
}

TEST(TokenizerLlama2c, Llama2BinMatchesLibsentencepiece) {
  auto tok = peft::load_tokenizer_file(fx("llama2/tokenizer.bin"));
  EXPECT_EQ(tok->vocab_size(), 32000);
  // llama2 tokenizer.model keeps whitespace as is, so every string compares.
  check_spm_reference(*tok, "llama2/tokenizer.model", [](const std::string& t) { return !t.empty(); });
  for (const auto& c : spm_ref().at("llama2/tokenizer.model")) {
    std::string text = c.at("text");
    EXPECT_EQ(tok->decode(tok->encode(text, true)), text);
  }
}

TEST(TokenizerLlama2c, ConvertedTokenizerJsonMatchesLibsentencepiece) {
  std::string dir = peft::test::temp_dir("tokjson");
  peft::write_tokenizer_json_from_llama2c(fx("llama2/tokenizer.bin"), dir);
  auto tok = peft::load_tokenizer(dir);
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->eos_id, 2);
  check_spm_reference(*tok, "llama2/tokenizer.model", [](const std::string& t) { return !t.empty(); });
  auto ids = tok->encode("Once upon a time", true);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(tok->decode(ids), "Once upon a time");
  // Same for the small stories260K vocabulary.
  std::string dir2 = peft::test::temp_dir("tokjson512");
  peft::write_tokenizer_json_from_llama2c(fx("stories260K/tok512.bin"), dir2);
  auto t2 = peft::load_tokenizer(dir2);
  check_spm_reference(*t2, "stories260K/tok512.model", ordinary);
}

TEST(TokenizerLoad, FolderPreferenceAndConfig) {
  std::string dir = peft::test::temp_dir("tokdir");
  fs::copy_file(fx("stories260K/tok512.bin"), dir + "/tok512.bin");
  auto t = peft::load_tokenizer(dir);  // llama2.c file
  EXPECT_EQ(t->vocab_size(), 512);
  fs::copy_file(fx("llama2/tokenizer.model"), dir + "/tokenizer.model");
  EXPECT_EQ(peft::load_tokenizer(dir)->vocab_size(), 32000);  // tokenizer.model preferred
  std::ofstream(dir + "/tokenizer_config.json")
      << R"({"add_bos_token": false, "add_eos_token": true, "chat_template": "{{ messages }}"})";
  auto t2 = peft::load_tokenizer(dir);
  auto ids = t2->encode("Hi", true);
  EXPECT_NE(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_EQ(t2->chat_template, "{{ messages }}");
  // tokenizer.json beats everything; tokenizer_config add_bos/add_eos override its template.
  peft::write_tokenizer_json_from_llama2c(fx("llama2/tokenizer.bin"), dir);
  auto t3 = peft::load_tokenizer(dir);
  auto ids3 = t3->encode("Hi", true);
  EXPECT_EQ(ids3, ids);
  EXPECT_THROW(peft::load_tokenizer(peft::test::temp_dir("empty")), peft::Error);
  EXPECT_THROW(peft::load_tokenizer(dir + "/nope"), peft::Error);
}

TEST(TokenizerStream, StreamDecoderHandlesBytePieces) {
  std::vector<std::string> files = {"stories260K/tok512.bin", "stories260K/tok512.model", "llama2/tokenizer.bin",
                                    "gpt2/tokenizer.json"};
  std::string text = "Hi 😀 family 👨‍👩‍👧 日本語 café, done.";
  for (const auto& f : files) {
    auto tok = peft::load_tokenizer_file(fx(f));
    auto ids = tok->encode(text, true);
    peft::StreamDecoder sd(*tok);
    std::string acc;
    for (int64_t id : ids) {
      std::string piece = sd.push(id);
      EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos) << f;
      acc += piece;
    }
    EXPECT_EQ(acc, text) << f;
  }
}

TEST(TokenizerErrors, InvalidInputAndIds) {
  for (const char* f : {"stories260K/tok512.bin", "stories260K/tok512.model", "gpt2/tokenizer.json",
                        "bert-base-uncased/vocab.txt", "unigram/tokenizer.json"}) {
    auto tok = peft::load_tokenizer_file(fx(f));
    EXPECT_THROW(tok->encode("bad \xff\xfe utf8"), peft::Error) << f;
    EXPECT_THROW(tok->encode("truncated \xE2\x96"), peft::Error) << f;
    EXPECT_THROW(tok->decode({-1}), peft::Error) << f;
    EXPECT_THROW(tok->decode({tok->vocab_size()}), peft::Error) << f;
    EXPECT_THROW(tok->id_to_token(tok->vocab_size() + 5), peft::Error) << f;
    EXPECT_EQ(tok->token_to_id("definitely-not-a-token-xyz"), -1);
  }
  auto t = peft::load_tokenizer_file(fx("stories260K/tok512.bin"));
  EXPECT_THROW(t->encode_pair("a", "b"), peft::Error);
}

namespace {
std::string write_tmp(const std::string& dir, const std::string& name, const std::string& data) {
  std::string p = dir + "/" + name;
  std::ofstream(p, std::ios::binary) << data;
  return p;
}
std::string read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
std::string error_of(const std::string& path) {
  try {
    peft::load_tokenizer_file(path);
  } catch (const peft::Error& e) {
    return e.what();
  }
  return "";
}
// Loads; when it loads, exercises encode/decode. Only peft::Error may escape.
void try_use(const std::string& path) {
  try {
    auto t = peft::load_tokenizer_file(path);
    auto ids = t->encode("Once upon a time, héllo 😀 world's  end", true);
    t->decode(ids);
    t->encode("", true);
    for (int64_t i = 0; i < std::min<int64_t>(t->vocab_size(), 20); ++i) t->decode({i});
  } catch (const peft::Error&) {
  }
}
}  // namespace

TEST(TokenizerErrors, MalformedTokenizerJsonNamesFileAndField) {
  std::string dir = peft::test::temp_dir("badjson");
  json base = {{"model",
                {{"type", "BPE"},
                 {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}, {"<unk>", 3}}},
                 {"merges", {"a b"}},
                 {"unk_token", "<unk>"}}}};
  auto err = [&](const json& j) { return error_of(write_tmp(dir, "tokenizer.json", j.dump())); };
  EXPECT_EQ(err(base), "");
  json j = base;
  j["model"]["merges"] = {"a c"};
  EXPECT: {
    std::string e = err(j);
    EXPECT_NE(e.find("tokenizer.json"), std::string::npos) << e;
    EXPECT_NE(e.find("model.merges[0]"), std::string::npos) << e;
  }
  j = base;
  j["model"]["type"] = "Fancy";
  EXPECT_NE(err(j).find("model.type"), std::string::npos);
  j = base;
  j["model"]["vocab"]["a"] = "zero";
  EXPECT_NE(err(j).find("model.vocab"), std::string::npos);
  j = base;
  j["model"].erase("merges");
  EXPECT_NE(err(j).find("model.merges"), std::string::npos);
  j = base;
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\d+"}}}, {"behavior", "Isolated"}};
  EXPECT_NE(err(j).find("pre_tokenizer.pattern"), std::string::npos);
  j = base;
  j["decoder"] = {{"type", "CTC"}};
  EXPECT_NE(err(j).find("decoder.type"), std::string::npos);
  j = base;
  j["added_tokens"] = {{{"id", "x"}, {"content", "<s>"}}};
  EXPECT_NE(err(j).find("added_tokens[0].id"), std::string::npos);
  EXPECT_NE(error_of(write_tmp(dir, "tokenizer.json", "{\"model\": [1, 2")).find("invalid JSON"), std::string::npos);
  // Truncated llama2.c file.
  std::string bin = read_all(fx("stories260K/tok512.bin"));
  std::string e = error_of(write_tmp(dir, "tok.bin", bin.substr(0, 1001)));
  EXPECT_NE(e.find("tok.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  EXPECT_NE(error_of(write_tmp(dir, "x.model", "garbage")).find("x.model"), std::string::npos);
}

TEST(TokenizerErrors, GeneratedCorruptionNeverCrashes) {
  std::string dir = peft::test::temp_dir("fuzz");
  std::mt19937 rng(1234);
  auto rnd = [&](size_t n) { return n ? size_t(rng() % n) : 0; };
  auto mutate = [&](std::string s) {
    int kind = int(rnd(3));
    if (kind == 0 || s.empty()) return s.substr(0, rnd(s.size() + 1));  // truncation
    int flips = 1 + int(rnd(4));
    for (int k = 0; k < flips; ++k) s[rnd(s.size())] ^= char(1 << rnd(8));  // bit flips
    if (kind == 2) s.insert(rnd(s.size()), std::string(rnd(8), char(rng())));  // insertion
    return s;
  };
  int cases = 0;
  for (const char* f : {"stories260K/tok512.bin", "unigram/spiece.model"}) {
    std::string orig = read_all(fx(f));
    std::string name = fs::path(f).filename().string();
    for (int i = 0; i < 1000; ++i, ++cases) try_use(write_tmp(dir, name, mutate(orig)));
  }
  // A small tokenizer.json: byte mutations and structural (JSON value) mutations.
  json small = {
      {"added_tokens", {{{"id", 3}, {"content", "<unk>"}, {"special", true}}}},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}, {"prepend", "▁"}}, {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}}}}}},
      {"post_processor", {{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", "<unk>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}, {"special_tokens", {{"<unk>", {{"id", "<unk>"}, {"ids", {3}}, {"tokens", {"<unk>"}}}}}}}},
      {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}, {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model", {{"type", "BPE"}, {"byte_fallback", true}, {"unk_token", "<unk>"},
                 {"vocab", {{"a", 0}, {"b", 1}, {"ab", 2}, {"<unk>", 3}, {"▁", 4}, {"<0x41>", 5}}},
                 {"merges", {"a b"}}}}};
  std::string text = small.dump();
  for (int i = 0; i < 1000; ++i, ++cases) try_use(write_tmp(dir, "tokenizer.json", mutate(text)));
  std::vector<json> odd = {nullptr, 1, -7, 1e300, "x", "", json::array(), json::object(), true, json::array({1, "a"})};
  for (int i = 0; i < 1000; ++i, ++cases) {
    json j = small;
    std::vector<json::json_pointer> ptrs;
    std::function<void(const json&, const json::json_pointer&)> walk = [&](const json& v, const json::json_pointer& p) {
      ptrs.push_back(p);
      if (v.is_object())
        for (auto it = v.begin(); it != v.end(); ++it) walk(it.value(), p / it.key());
      if (v.is_array())
        for (size_t k = 0; k < v.size(); ++k) walk(v[k], p / k);
    };
    walk(j, json::json_pointer());
    auto p = ptrs[1 + rnd(ptrs.size() - 1)];
    if (rnd(4) == 0) {
      json& parent = j[p.parent_pointer()];
      if (parent.is_object()) parent.erase(p.back());
      else j[p] = odd[rnd(odd.size())];
    } else {
      j[p] = odd[rnd(odd.size())];
    }
    try_use(write_tmp(dir, "tokenizer.json", j.dump()));
  }
  EXPECT_GE(cases, 4000);
}

TEST(TokenizerCli, TokenizePrintsIdsAndText) {
  std::string out;
  int rc = peft::test::run_cli("tokenize --tokenizer " + fx("stories260K/tok512.bin") + " --text 'Once upon a time'", &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "1 403 407 261 378\nOnce upon a time\n");
  rc = peft::test::run_cli("tokenize --tokenizer " + fx("stories260K/tok512.bin") + " --text 'Once upon a time' --no-special", &out);
  EXPECT_EQ(out, "403 407 261 378\nOnce upon a time\n");
  rc = peft::test::run_cli("tokenize --model " + fx("gpt2") + " --text 'Hello world'", &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "15496 995\nHello world\n");
  rc = peft::test::run_cli("tokenize --model /nonexistent --text x", &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("/nonexistent"), std::string::npos) << out;
}
