// Dataset files: the first input byte picks the format (JSON Lines, a JSON array / alpaca,
// CSV, TSV, plain text), the rest is the file. Rows are read, their kind detected, and then
// tokenized with the bundled stories260K tokenizer (as `peft train` does).
#include "fuzz_util.h"
#include "peft/data.h"
#include "peft/tokenizer.h"

static const char* kNames[] = {"d.jsonl", "d.json", "d.csv", "d.tsv", "d.txt"};

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static auto tok = peft::load_tokenizer(std::string(PEFT_FUZZ_SOURCE_DIR) + "/assets/stories260K");
  const char* name = kNames[data[0] % 5];
  auto path = peft::fuzz::put(name, data + 1, size - 1);
  return peft::fuzz::guarded([&] {
    peft::DataFormat fmt;
    fmt.bad_rows = (data[0] & 8) ? peft::BadRowPolicy::Skip : peft::BadRowPolicy::Fail;
    fmt.txt_whole_file = (data[0] & 16) != 0;
    auto rows = peft::read_records(path, fmt);
    if (rows.empty()) return;
    auto kind = peft::detect_data_kind(rows, fmt, path);
    peft::TokenizeOptions opts;
    opts.max_length = 32;
    (void)peft::tokenize_records(rows, kind, *tok, opts, fmt, path);
  });
}
