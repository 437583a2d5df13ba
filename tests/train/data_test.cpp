// Data loading: every file format, every DataKind, bad-row reporting, batching, packing,
// splitting and the resumable DataLoader. Files are written into a temp dir per test.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "peft/data.h"
#include "peft/error.h"
#include "peft/tokenizer.h"
#include "test_util.h"

namespace {

using peft::DataKind;

const peft::Tokenizer& stories_tok() {
  static auto t = peft::load_tokenizer(peft::test::source_path("assets/stories260K"));
  return *t;
}

std::string write(const std::string& name, const std::string& body) {
  static std::string dir = peft::test::temp_dir("data");
  std::string p = dir + "/" + name;
  std::ofstream(p, std::ios::binary) << body;
  return p;
}

peft::DataSplits load(const std::string& path, peft::DataFormat f = {}, int64_t max_len = 64) {
  peft::DataConfig c;
  c.train_file = path;
  c.format = f;
  c.tokenize.max_length = max_len;
  return peft::load_data(c, stories_tok());
}

// Expects load() to throw a peft::Error whose message contains every needle.
void expect_error(const std::string& path, const std::vector<std::string>& needles, peft::DataFormat f = {}) {
  try {
    load(path, f);
    ADD_FAILURE() << "no error for " << path;
  } catch (const peft::Error& e) {
    for (auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what() << "\n want: " << n;
  }
}

}  // namespace

TEST(Data, JsonlPromptCompletionMasksThePrompt) {
  auto p = write("pc.jsonl", "{\"prompt\": \"Once upon a time\", \"completion\": \"there was a cat.\"}\n\n"
                             "{\"prompt\": \"Lily\", \"completion\": \"ran home.\"}\n");
  auto d = load(p);
  const auto& tok = stories_tok();
  ASSERT_EQ(d.train.kind, DataKind::PromptCompletion);
  ASSERT_EQ(d.train.size(), 2u);
  const auto& ex = d.train.examples[0];
  auto prompt = tok.encode("Once upon a time", true);
  auto completion = tok.encode("there was a cat.", false);
  ASSERT_EQ(ex.input_ids.size(), prompt.size() + completion.size() + (tok.eos_id >= 0 ? 1 : 0));
  ASSERT_EQ(ex.labels.size(), ex.input_ids.size());
  EXPECT_EQ(ex.input_ids[0], tok.bos_id);
  for (size_t i = 0; i < prompt.size(); ++i) EXPECT_EQ(ex.labels[i], -100) << i;
  for (size_t i = prompt.size(); i < ex.input_ids.size(); ++i) EXPECT_EQ(ex.labels[i], ex.input_ids[i]) << i;
  if (tok.eos_id >= 0) EXPECT_EQ(ex.input_ids.back(), tok.eos_id);
  EXPECT_EQ(d.train.examples[1].where, p + ":3");
}

TEST(Data, TextLabelsEveryToken) {
  auto p = write("t.jsonl", "{\"text\": \"The dog ran.\"}\n");
  auto d = load(p);
  ASSERT_EQ(d.train.kind, DataKind::Text);
  EXPECT_EQ(d.train.examples[0].labels, d.train.examples[0].input_ids);
  EXPECT_EQ(d.train.examples[0].input_ids[0], stories_tok().bos_id);
}

TEST(Data, AlpacaTemplateAndAutoDetect) {
  std::string with = peft::alpaca_prompt("Add the numbers.", "2 and 3");
  EXPECT_NE(with.find("### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n"), std::string::npos);
  std::string without = peft::alpaca_prompt("Say hi.", "");
  EXPECT_EQ(without.find("### Input:"), std::string::npos);
  EXPECT_NE(without.find("### Instruction:\nSay hi.\n\n### Response:\n"), std::string::npos);

  auto p = write("a.jsonl", "{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"Hi!\"}\n"
                            "{\"instruction\": \"Add.\", \"output\": \"5\"}\n");
  auto d = load(p, {}, 256);
  ASSERT_EQ(d.train.kind, DataKind::Alpaca);
  ASSERT_EQ(d.train.size(), 2u);
  const auto& ex = d.train.examples[0];
  size_t n_prompt = stories_tok().encode(without, true).size();
  for (size_t i = 0; i < n_prompt; ++i) EXPECT_EQ(ex.labels[i], -100);
  EXPECT_NE(ex.labels[n_prompt], -100);
}

TEST(Data, JsonArrayFile) {
  auto p = write("arr.json", "[{\"instruction\": \"a\", \"input\": \"b\", \"output\": \"c\"}, {\"text\": 1}]");
  peft::DataFormat f;
  f.bad_rows = peft::BadRowPolicy::Skip;
  auto d = load(p, f, 256);
  EXPECT_EQ(d.train.size(), 1u);
  EXPECT_EQ(d.train.stats.skipped, 1);  // no instruction/output in the second element
}

TEST(Data, CsvRfc4180QuotingAndClassificationLabels) {
  // Quoted comma, doubled quote, a newline inside quotes (the next record starts on line 5), CRLF.
  auto p = write("c.csv",
                 "text,label\r\n"
                 "\"Hello, world\",pos\r\n"
                 "\"She said \"\"no\"\"\",neg\r\n"
                 "\"two\nlines\",pos\r\n"
                 "plain,neutral\r\n");
  peft::DataFormat f;
  auto rows = peft::read_records(p, f);
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0].fields["text"], "Hello, world");
  EXPECT_EQ(rows[1].fields["text"], "She said \"no\"");
  EXPECT_EQ(rows[2].fields["text"], "two\nlines");
  EXPECT_EQ(rows[3].line, 6);
  EXPECT_EQ(rows[3].fields["label"], "neutral");
  auto d = load(p, f);
  ASSERT_EQ(d.train.kind, DataKind::Classification);
  EXPECT_EQ(d.train.label_names, (std::vector<std::string>{"neg", "neutral", "pos"}));
  EXPECT_EQ(d.train.examples[0].label, 2);
  EXPECT_EQ(d.train.examples[1].label, 0);
  auto b = peft::collate(d.train, {0, 1, 2, 3});
  EXPECT_EQ(b.labels.sizes(), (std::vector<int64_t>{4}));
  EXPECT_EQ(b.labels[3].item<int64_t>(), 1);
}

TEST(Data, IntegerLabelsSortNumerically) {
  auto p = write("ints.jsonl", "{\"text\": \"a\", \"label\": 10}\n{\"text\": \"b\", \"label\": 2}\n"
                               "{\"text\": \"c\", \"label\": 1}\n");
  auto d = load(p);
  EXPECT_EQ(d.train.label_names, (std::vector<std::string>{"1", "2", "10"}));
  EXPECT_EQ(d.train.examples[0].label, 2);
}

TEST(Data, ExplicitLabelSetAndEvalLabelOutsideIt) {
  auto train = write("tr.jsonl", "{\"text\": \"a\", \"label\": \"yes\"}\n{\"text\": \"b\", \"label\": \"no\"}\n");
  auto eval = write("ev.jsonl", "{\"text\": \"a\", \"label\": \"yes\"}\n{\"text\": \"b\", \"label\": \"maybe\"}\n");
  peft::DataConfig c;
  c.train_file = train;
  c.tokenize.labels = {"yes", "no"};
  auto d = peft::load_data(c, stories_tok());
  EXPECT_EQ(d.train.examples[0].label, 0);
  EXPECT_EQ(d.train.examples[1].label, 1);
  c.tokenize.labels.clear();
  c.eval_file = eval;
  c.format.bad_rows = peft::BadRowPolicy::Skip;  // an unknown label is an error even so
  try {
    peft::load_data(c, stories_tok());
    ADD_FAILURE() << "no error";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find(eval + ":2: label 'maybe' is not in the label set [no, yes]"),
              std::string::npos)
        << e.what();
  }
}

TEST(Data, SentencePairClassificationGivesTokenTypes) {
  auto bert = peft::load_tokenizer(peft::test::source_path("tests/fixtures/tokenizers/bert-base-uncased"));
  auto p = write("pair.jsonl", "{\"sentence1\": \"the cat sat\", \"sentence2\": \"a cat was sitting\", \"label\": 1}\n"
                               "{\"sentence1\": \"hello\", \"sentence2\": \"goodbye\", \"label\": 0}\n");
  peft::DataConfig c;
  c.train_file = p;
  c.format.kind = DataKind::Classification;
  c.format.text_column = "sentence1";
  c.format.text_pair_column = "sentence2";
  auto d = peft::load_data(c, *bert);
  ASSERT_EQ(d.train.size(), 2u);
  std::vector<int64_t> tt;
  auto ids = bert->encode_pair("the cat sat", "a cat was sitting", &tt);
  EXPECT_EQ(d.train.examples[0].input_ids, ids);
  EXPECT_EQ(d.train.examples[0].token_type_ids, tt);
  auto b = peft::collate(d.train, {0, 1});
  ASSERT_TRUE(b.token_type_ids.defined());
  EXPECT_EQ(b.token_type_ids.sizes(), b.input_ids.sizes());
  int64_t second = 0;
  for (auto t : d.train.examples[1].token_type_ids) second += t;
  EXPECT_GT(second, 0);
  EXPECT_EQ(b.token_type_ids[1].sum().item<int64_t>(), second);
}

TEST(Data, RegressionLabels) {
  auto p = write("sts.tsv", "text\ttext_pair\tlabel\nA man plays.\tA man is playing.\t4.25\nx\ty\t0\n");
  peft::DataFormat f;
  f.regression = true;
  f.kind = DataKind::Classification;
  auto d = load(p, f);
  auto b = peft::collate(d.train, {0, 1});
  EXPECT_EQ(b.labels.dtype(), torch::kFloat32);
  EXPECT_FLOAT_EQ(b.labels[0].item<float>(), 4.25f);
}

TEST(Data, TsvWithQuotingOffKeepsQuotes) {
  auto p = write("q.tsv", "text\tlabel\n\"quoted\" and \"more\tpos\n");
  peft::DataFormat f;
  f.csv_quoting = false;
  auto rows = peft::read_records(p, f);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].fields["text"], "\"quoted\" and \"more");
}

TEST(Data, Seq2SeqPadsLabelsWithIgnoreIndex) {
  auto p = write("s.jsonl", "{\"source\": \"The cat sat on the mat.\", \"target\": \"Le chat.\"}\n"
                            "{\"source\": \"Hi\", \"target\": \"A much longer target sentence here.\"}\n");
  auto d = load(p);
  ASSERT_EQ(d.train.kind, DataKind::Seq2Seq);
  const auto& tok = stories_tok();
  auto b = peft::collate(d.train, {0, 1});
  auto l0 = d.train.examples[0].labels, l1 = d.train.examples[1].labels;
  ASSERT_LT(l0.size(), l1.size());
  EXPECT_EQ(b.labels.size(1), static_cast<int64_t>(l1.size()));
  EXPECT_EQ(b.labels[0][static_cast<int64_t>(l0.size())].item<int64_t>(), -100);
  if (tok.eos_id >= 0) EXPECT_EQ(l0.back(), tok.eos_id);
  EXPECT_NE(l0.front(), tok.bos_id);
}

TEST(Data, TxtLinesAndWholeFileChunks) {
  std::string story = "Once upon a time there was a little dog. He liked to run and play in the sun.";
  auto p = write("s.txt", story + "\n\n" + story + "\n   \n" + story + "\n");
  auto lines = load(p);
  ASSERT_EQ(lines.train.size(), 3u);
  EXPECT_EQ(lines.train.examples[2].where, p + ":5");
  peft::DataFormat f;
  f.txt_whole_file = true;
  auto whole = load(p, f, 16);
  int64_t total = 0;
  for (auto& ex : whole.train.examples) {
    EXPECT_LE(ex.input_ids.size(), 16u);
    EXPECT_EQ(ex.labels, ex.input_ids);
    total += static_cast<int64_t>(ex.input_ids.size());
  }
  // Two paragraphs (split at the blank line); each tokenized with BOS; one EOS at the end.
  auto a = stories_tok().encode(story, true);
  auto b = stories_tok().encode(story + "\n   \n" + story + "\n", true);
  int64_t expect = static_cast<int64_t>(a.size() + b.size()) + (stories_tok().eos_id >= 0 ? 1 : 0);
  EXPECT_LE(expect - total, 1);  // a final 1-token block is dropped (nothing to predict)
  EXPECT_GE(expect - total, 0);
  EXPECT_GT(whole.train.size(), 4u);
}

TEST(Data, TruncationAndPromptTooLong) {
  auto p = write("long.jsonl", "{\"prompt\": \"a\", \"completion\": \"" + std::string(400, 'x') + "\"}\n");
  auto d = load(p, {}, 32);
  EXPECT_EQ(d.train.examples[0].input_ids.size(), 32u);
  EXPECT_EQ(d.train.examples[0].labels.size(), 32u);
  auto q = write("longprompt.jsonl", "{\"prompt\": \"" + std::string(400, 'x') + "\", \"completion\": \"a\"}\n");
  expect_error(q, {q + ":1: prompt is", "max_length 64"});
}

TEST(Data, BatchesPadRightWithMaskAndIgnoredLabels) {
  auto p = write("b.jsonl", "{\"text\": \"Hi.\"}\n{\"text\": \"The little girl went to the park to play.\"}\n");
  auto d = load(p);
  auto b = peft::collate(d.train, {0, 1});
  int64_t n0 = static_cast<int64_t>(d.train.examples[0].input_ids.size());
  int64_t n1 = static_cast<int64_t>(d.train.examples[1].input_ids.size());
  ASSERT_EQ(b.input_ids.sizes(), (std::vector<int64_t>{2, n1}));
  EXPECT_EQ(b.attention_mask[0].sum().item<int64_t>(), n0);
  EXPECT_EQ(b.attention_mask[1].sum().item<int64_t>(), n1);
  EXPECT_EQ(b.num_tokens, n0 + n1);
  for (int64_t t = n0; t < n1; ++t) {
    EXPECT_EQ(b.labels[0][t].item<int64_t>(), -100);
    EXPECT_EQ(b.input_ids[0][t].item<int64_t>(), d.train.pad_id);
    EXPECT_EQ(b.attention_mask[0][t].item<int64_t>(), 0);
  }
  auto seq = peft::sequential_batches(d.train, 1);
  ASSERT_EQ(seq.size(), 2u);
  EXPECT_EQ(seq[1].indices, (std::vector<size_t>{1}));
}

TEST(Data, PackingKeepsTokensAndLabelsWithinBlocks) {
  std::string body;
  for (int i = 0; i < 20; ++i)
    body += "{\"prompt\": \"Q" + std::to_string(i) + "\", \"completion\": \"The cat sat number " + std::to_string(i) + ".\"}\n";
  auto p = write("pack.jsonl", body);
  peft::DataConfig c;
  c.train_file = p;
  c.tokenize.max_length = 48;
  auto plain = peft::load_data(c, stories_tok());
  c.pack = true;
  auto packed = peft::load_data(c, stories_tok());
  EXPECT_LT(packed.train.size(), plain.train.size());
  std::vector<int64_t> all_ids, all_labels, p_ids, p_labels;
  for (auto& e : plain.train.examples) {
    all_ids.insert(all_ids.end(), e.input_ids.begin(), e.input_ids.end());
    all_labels.insert(all_labels.end(), e.labels.begin(), e.labels.end());
  }
  for (auto& e : packed.train.examples) {
    EXPECT_LE(e.input_ids.size(), 48u);
    p_ids.insert(p_ids.end(), e.input_ids.begin(), e.input_ids.end());
    p_labels.insert(p_labels.end(), e.labels.begin(), e.labels.end());
  }
  EXPECT_EQ(p_ids, all_ids);
  EXPECT_EQ(p_labels, all_labels);
  auto cls = write("packcls.jsonl", "{\"text\": \"a\", \"label\": 1}\n");
  c.train_file = cls;
  EXPECT_THROW(peft::load_data(c, stories_tok()), peft::Error);
}

TEST(Data, ValidationSplitIsDeterministicBySeed) {
  std::string body;
  for (int i = 0; i < 50; ++i) body += "{\"text\": \"story " + std::to_string(i) + "\"}\n";
  auto p = write("split.jsonl", body);
  peft::DataConfig c;
  c.train_file = p;
  c.eval_fraction = 0.2;
  c.seed = 7;
  auto a = peft::load_data(c, stories_tok()), b = peft::load_data(c, stories_tok());
  ASSERT_EQ(a.eval.size(), 10u);
  ASSERT_EQ(a.train.size(), 40u);
  std::set<std::string> ta, ea, eb;
  for (auto& e : a.train.examples) ta.insert(e.where);
  for (auto& e : a.eval.examples) {
    ea.insert(e.where);
    EXPECT_EQ(ta.count(e.where), 0u);
  }
  for (auto& e : b.eval.examples) eb.insert(e.where);
  EXPECT_EQ(ea, eb);
  c.seed = 8;
  auto d = peft::load_data(c, stories_tok());
  std::set<std::string> ed;
  for (auto& e : d.eval.examples) ed.insert(e.where);
  EXPECT_NE(ea, ed);
}

TEST(Data, SeparateEvalFile) {
  auto tr = write("sep_tr.csv", "text,label\na,x\nb,y\n");
  auto ev = write("sep_ev.csv", "text,label\nc,y\n");
  peft::DataConfig c;
  c.train_file = tr;
  c.eval_file = ev;
  auto d = peft::load_data(c, stories_tok());
  ASSERT_EQ(d.eval.size(), 1u);
  EXPECT_EQ(d.eval.examples[0].label, 1);
  EXPECT_EQ(d.eval.label_names, d.train.label_names);
}

TEST(Data, LoaderIsDeterministicAndResumable) {
  std::string body;
  for (int i = 0; i < 10; ++i) body += "{\"text\": \"s" + std::to_string(i) + "\"}\n";
  auto d = load(write("loader.jsonl", body));
  peft::DataLoader a(d.train, 3, 123), b(d.train, 3, 123);
  std::vector<size_t> seen;
  for (int i = 0; i < 4; ++i) {  // one epoch: 3+3+3+1
    auto x = a.next_batch(), y = b.next_batch();
    EXPECT_EQ(x.indices, y.indices);
    seen.insert(seen.end(), x.indices.begin(), x.indices.end());
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, (std::vector<size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(a.batches_per_epoch(), 4);
  a.next_batch();
  EXPECT_EQ(a.epoch(), 1);
  EXPECT_NE(a.epoch_order(0), a.epoch_order(1));
  nlohmann::json st = a.state();
  std::vector<std::vector<size_t>> expect;
  for (int i = 0; i < 6; ++i) expect.push_back(a.next_batch().indices);
  peft::DataLoader c(d.train, 3, 123);
  c.restore(nlohmann::json::parse(st.dump()));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(c.next_batch().indices, expect[static_cast<size_t>(i)]) << i;
  peft::DataLoader other(d.train, 3, 124);
  EXPECT_NE(other.epoch_order(0), a.epoch_order(0));
  EXPECT_THROW(other.restore(st), peft::Error);
  peft::DataLoader ordered(d.train, 4, 1, /*shuffle=*/false, /*drop_last=*/true);
  EXPECT_EQ(ordered.next_batch().indices, (std::vector<size_t>{0, 1, 2, 3}));
  ordered.next_batch();
  EXPECT_EQ(ordered.next_batch().indices, (std::vector<size_t>{0, 1, 2, 3}));  // the 2 left over are dropped
}

// ---- bad rows ----

TEST(DataErrors, EachBadRowNamesFileAndLine) {
  auto missing = write("e1.jsonl", "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}\n");
  expect_error(missing, {missing + ":2: missing field 'completion'"});
  auto wrong = write("e2.jsonl", "{\"text\": \"a\"}\n{\"text\": 5}\n");
  expect_error(wrong, {wrong + ":2: field 'text': expected a string, got number"});
  auto empty = write("e3.jsonl", "{\"text\": \"a\"}\n{\"text\": \"  \"}\n");
  expect_error(empty, {empty + ":2: field 'text': empty text"});
  auto utf8 = write("e4.jsonl", "{\"text\": \"a\"}\n{\"text\": \"bad \xC3\x28 byte\"}\n");
  expect_error(utf8, {utf8 + ":2: invalid UTF-8"});
  auto json = write("e5.jsonl", "{\"text\": \"a\"}\n{\"text\": \"a\"\n");
  expect_error(json, {json + ":2: invalid JSON"});
  auto unterminated = write("e6.csv", "text,label\nok,1\n\"never closed,1\nx,2\n");
  expect_error(unterminated, {unterminated + ":3: unparsable CSV line: unterminated quoted field"});
  auto stray = write("e7.csv", "text,label\nok,1\nbad\"quote,1\n");
  expect_error(stray, {stray + ":3: unparsable CSV line: quote inside an unquoted field"});
  auto fields = write("e8.csv", "text,label\nok,1\ntoo,many,fields\n");
  expect_error(fields, {fields + ":3: expected 2 fields"});
  auto label = write("e9.jsonl", "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": [1]}\n");
  expect_error(label, {label + ":2: field 'label': expected a string or integer label"});
  auto txt = write("e10.txt", "fine\nbad \xFF\n");
  expect_error(txt, {txt + ":2: invalid UTF-8"});
}

TEST(DataErrors, SkipPolicyCountsAndEmptyDatasetIsAnError) {
  auto p = write("skip.jsonl", "{\"text\": \"good\"}\n{\"text\": 5}\nnot json\n{\"text\": \"\"}\n{\"text\": \"also good\"}\n");
  peft::DataFormat f;
  f.bad_rows = peft::BadRowPolicy::Skip;
  testing::internal::CaptureStderr();
  auto d = load(p, f);
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(d.train.size(), 2u);
  EXPECT_EQ(d.train.stats.rows, 5);
  EXPECT_EQ(d.train.stats.skipped, 3);
  EXPECT_NE(err.find("skipped 3 bad rows"), std::string::npos) << err;
  EXPECT_NE(err.find(p), std::string::npos) << err;

  auto none = write("none.jsonl", "{\"text\": 1}\n{\"text\": \"\"}\n");
  f.kind = DataKind::Text;
  testing::internal::CaptureStderr();
  expect_error(none, {none + ": empty dataset", "2 skipped"}, f);
  testing::internal::GetCapturedStderr();
  auto blank = write("blank.jsonl", "\n\n");
  expect_error(blank, {blank + ": no usable rows"});
}

TEST(DataErrors, UnknownFormatsAndColumns) {
  auto p = write("x.parquet", "");
  expect_error(p, {p, "cannot tell the data format from the extension"});
  auto q = write("cols.jsonl", "{\"foo\": \"a\", \"bar\": \"b\"}\n");
  expect_error(q, {q, "cannot tell the data format from the columns [bar, foo]"});
  EXPECT_THROW(peft::data_kind_from_name("tabular"), peft::Error);
  EXPECT_EQ(peft::data_kind_from_name("alpaca"), DataKind::Alpaca);
  EXPECT_THROW(peft::bad_row_policy_from_name("ignore"), peft::Error);
  expect_error("/nonexistent/data.jsonl", {"/nonexistent/data.jsonl"});
}

TEST(Data, BundledAssetsLoad) {
  peft::DataConfig c;
  c.train_file = peft::test::source_path("assets/e2e/train.jsonl");
  c.eval_file = peft::test::source_path("assets/e2e/validation.jsonl");
  c.tokenize.max_length = 128;
  auto e2e = peft::load_data(c, stories_tok());
  EXPECT_EQ(e2e.train.kind, DataKind::PromptCompletion);
  EXPECT_EQ(e2e.train.size(), 1966u);
  EXPECT_EQ(e2e.eval.size(), 220u);
  EXPECT_EQ(e2e.train.stats.skipped, 0);
  auto test_rows = peft::read_records(peft::test::source_path("assets/e2e/test.jsonl"), {});
  ASSERT_EQ(test_rows.size(), 100u);
  for (auto& r : test_rows) EXPECT_GE(r.fields["references"].size(), 1u) << r.where();

  peft::DataConfig s;
  s.train_file = peft::test::source_path("assets/tinystories/valid_sample.txt");
  s.format.txt_whole_file = true;
  s.tokenize.max_length = 256;
  s.eval_fraction = 0.1;
  auto stories = peft::load_data(s, stories_tok());
  EXPECT_GT(stories.train.size(), 20u);
  EXPECT_GT(stories.eval.size(), 0u);

  peft::DataConfig a;
  a.train_file = peft::test::source_path("assets/alpaca/alpaca_gpt4_sample.jsonl");
  a.tokenize.max_length = 4096;
  a.format.bad_rows = peft::BadRowPolicy::Skip;
  auto alpaca = peft::load_data(a, stories_tok());
  EXPECT_EQ(alpaca.train.kind, DataKind::Alpaca);
  EXPECT_GT(alpaca.train.size(), 150u);
}
