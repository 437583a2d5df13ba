// Resource limits on data: a text over PEFT_MAX_ROW_BYTES is a bad row (refused, or skipped
// and counted under bad_rows=skip) before it is tokenized; files too big for memory are a clear error.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "peft/data.h"
#include "peft/error.h"
#include "peft/tokenizer.h"
#include "test_util.h"

using namespace peft;

namespace {
struct RowCap {
  explicit RowCap(const char* v) { setenv("PEFT_MAX_ROW_BYTES", v, 1); }
  ~RowCap() { unsetenv("PEFT_MAX_ROW_BYTES"); }
};

std::string write(const std::string& name, const std::string& text) {
  std::string p = test::temp_dir("data_caps") + "/" + name;
  std::ofstream(p) << text;
  return p;
}
}  // namespace

TEST(DataCaps, RowOverTheCapIsABadRowNamingTheLine) {
  auto tok = load_tokenizer(test::source_path("assets/stories260K"));
  std::string big(200, 'a');
  auto path = write("rows.jsonl", "{\"text\": \"Once upon a time.\"}\n{\"text\": \"" + big + "\"}\n{\"text\": \"The end.\"}\n");
  RowCap cap("100");
  DataFormat fmt;
  auto rows = read_records(path, fmt);
  TokenizeOptions o;
  try {
    tokenize_records(rows, DataKind::Text, *tok, o, fmt, path);
    FAIL() << "a 200-byte text passed a 100-byte cap";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find(path + ":2"), std::string::npos) << m;
    EXPECT_NE(m.find("PEFT_MAX_ROW_BYTES"), std::string::npos) << m;
  }
  fmt.bad_rows = BadRowPolicy::Skip;
  auto ds = tokenize_records(rows, DataKind::Text, *tok, o, fmt, path);
  EXPECT_EQ(ds.examples.size(), 2u);
  EXPECT_EQ(ds.stats.skipped, 1);
}

TEST(DataCaps, DefaultCapKeepsOrdinaryRowsAndMalformedCapIsAnError) {
  auto tok = load_tokenizer(test::source_path("assets/stories260K"));
  auto path = write("ok.jsonl", "{\"text\": \"" + std::string(5000, 'b') + "\"}\n");
  DataFormat fmt;
  auto rows = read_records(path, fmt);
  TokenizeOptions o;
  EXPECT_EQ(tokenize_records(rows, DataKind::Text, *tok, o, fmt, path).examples.size(), 1u);
  RowCap cap("-5");
  EXPECT_THROW(tokenize_records(rows, DataKind::Text, *tok, o, fmt, path), Error);
}
