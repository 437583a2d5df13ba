// Rows -> tokenized examples (per DataKind), packing, splitting and load_data().
#include "peft/data.h"

#include <algorithm>
#include <cstdlib>
#include <set>

#include "peft/error.h"
#include "peft/tokenizer.h"
#include "tokenizer/unicode.h"
#include "train/data_internal.h"

namespace peft {

namespace {
const std::vector<std::pair<DataKind, std::string>>& kind_names() {
  static const std::vector<std::pair<DataKind, std::string>> k = {
      {DataKind::Auto, "auto"},         {DataKind::Text, "text"},
      {DataKind::PromptCompletion, "prompt_completion"}, {DataKind::Alpaca, "alpaca"},
      {DataKind::Classification, "classification"},     {DataKind::Seq2Seq, "seq2seq"}};
  return k;
}
}  // namespace

std::string data_kind_name(DataKind k) {
  for (auto& [kind, name] : kind_names())
    if (kind == k) return name;
  return "?";
}

DataKind data_kind_from_name(const std::string& s) {
  std::string all;
  for (auto& [kind, name] : kind_names()) {
    if (name == s) return kind;
    all += (all.empty() ? "" : ", ") + name;
  }
  fail("unknown data format '", s, "' (expected one of: ", all, ")");
}

BadRowPolicy bad_row_policy_from_name(const std::string& s) {
  if (s == "fail") return BadRowPolicy::Fail;
  if (s == "skip") return BadRowPolicy::Skip;
  fail("unknown bad-row policy '", s, "' (expected fail or skip)");
}

bool Dataset::is_causal_lm() const {
  return kind == DataKind::Text || kind == DataKind::PromptCompletion || kind == DataKind::Alpaca;
}

DataKind detect_data_kind(const std::vector<DataRecord>& rows, const DataFormat& f, const std::string& file) {
  std::set<std::string> cols;
  for (size_t i = 0; i < rows.size() && i < 16; ++i)
    for (auto& [k, v] : rows[i].fields.items()) cols.insert(k);
  auto has = [&](const std::string& c) { return cols.count(c) > 0; };
  if (has(f.instruction_column) && has(f.output_column)) return DataKind::Alpaca;
  if (has(f.prompt_column) && has(f.completion_column)) return DataKind::PromptCompletion;
  if (has(f.source_column) && has(f.target_column)) return DataKind::Seq2Seq;
  if (has(f.text_column) && has(f.label_column)) return DataKind::Classification;
  if (has(f.text_column)) return DataKind::Text;
  std::string found;
  for (auto& c : cols) found += (found.empty() ? "" : ", ") + c;
  fail(file, ": cannot tell the data format from the columns [", found,
       "]; expected text | prompt+completion | instruction+output | text+label | source+target, "
       "or set the format and column names");
}

std::string alpaca_prompt(const std::string& instruction, const std::string& input) {
  std::string s;
  if (input.empty()) {
    s = "Here is a task for you, given as an instruction. Write a reply that carries it out well.\n\n";
    s += "### Instruction:\n" + instruction + "\n\n";
  } else {
    s = "Here is a task for you, given as an instruction together with an input that gives it more "
        "context. Write a reply that carries it out well.\n\n";
    s += "### Instruction:\n" + instruction + "\n\n### Input:\n" + input + "\n\n";
  }
  return s + "### Response:\n";
}

namespace {

using data_detail::BadRows;

// A row whose field cannot be used: throws this, caught per row and handed to BadRows.
struct RowError {
  std::string reason;
};

// Tokenizing a text costs memory and time in proportion to its bytes, whatever max_length keeps,
// so one runaway row (a log line, a whole book in one field) must not take the machine: a text
// over PEFT_MAX_ROW_BYTES (default 16 MiB; a paragraph in .txt whole-file mode) is a bad row.
uint64_t max_row_bytes() {
  const char* v = std::getenv("PEFT_MAX_ROW_BYTES");
  if (!v || !*v) return uint64_t(16) << 20;
  char* end = nullptr;
  unsigned long long n = std::strtoull(v, &end, 10);
  PEFT_CHECK(end && *end == '\0' && v[0] != '-' && n > 0, "PEFT_MAX_ROW_BYTES: expected a positive byte count, got '", v,
             "'");
  return static_cast<uint64_t>(n);
}

void check_row_bytes(size_t n, const std::string& what) {
  if (n > max_row_bytes())
    throw RowError{str_cat(what, ": ", n, " bytes, over the ", max_row_bytes(),
                           "-byte cap on one text (PEFT_MAX_ROW_BYTES raises it)")};
}

// The string value of `col`; std::nullopt-like "" with *present=false when absent and optional.
std::string field_text(const DataRecord& r, const std::string& col, bool required, bool allow_empty,
                       bool* present = nullptr, bool whole_file = false) {
  auto it = r.fields.find(col);
  if (it == r.fields.end() || (it->is_null() && !required)) {
    if (present) *present = false;
    if (required) throw RowError{"missing field '" + col + "'"};
    return "";
  }
  if (present) *present = true;
  if (!it->is_string()) throw RowError{str_cat("field '", col, "': expected a string, got ", it->type_name())};
  const std::string& s = it->get_ref<const std::string&>();
  if (!whole_file) check_row_bytes(s.size(), "field '" + col + "'");
  if (tok::utf8_invalid_at(s) != std::string::npos) throw RowError{"field '" + col + "': invalid UTF-8"};
  if (!allow_empty && s.find_first_not_of(" \t\r\n") == std::string::npos)
    throw RowError{"field '" + col + "': empty text"};
  return s;
}

// Classification label as written (integers as decimal text).
std::string field_label(const DataRecord& r, const std::string& col) {
  auto it = r.fields.find(col);
  if (it == r.fields.end()) throw RowError{"missing field '" + col + "'"};
  if (it->is_string()) {
    std::string s = it->get<std::string>();
    if (s.empty()) throw RowError{"field '" + col + "': empty label"};
    return s;
  }
  if (it->is_number_integer()) return std::to_string(it->get<int64_t>());
  if (it->is_boolean()) return it->get<bool>() ? "true" : "false";
  if (it->is_number_float())
    throw RowError{str_cat("field '", col, "': a real-valued label (", it->dump(),
                           "): for a regression head set regression: true (--regression true)")};
  throw RowError{str_cat("field '", col, "': expected a string or integer label, got ", it->type_name())};
}

float field_number(const DataRecord& r, const std::string& col) {
  auto it = r.fields.find(col);
  if (it == r.fields.end()) throw RowError{"missing field '" + col + "'"};
  if (it->is_number()) return it->get<float>();
  if (it->is_string()) {
    const std::string& s = it->get_ref<const std::string&>();
    char* end = nullptr;
    float v = std::strtof(s.c_str(), &end);
    if (!s.empty() && end == s.c_str() + s.size()) return v;
  }
  throw RowError{str_cat("field '", col, "': expected a number (regression label)")};
}

bool is_integer(const std::string& s) {
  if (s.empty()) return false;
  char* end = nullptr;
  std::strtoll(s.c_str(), &end, 10);
  return end == s.c_str() + s.size();
}

std::vector<std::string> sorted_labels(std::set<std::string> seen) {
  std::vector<std::string> v(seen.begin(), seen.end());
  bool ints = std::all_of(v.begin(), v.end(), is_integer);
  if (ints)
    std::sort(v.begin(), v.end(),
              [](const std::string& a, const std::string& b) { return std::stoll(a) < std::stoll(b); });
  return v;
}

void append_eos(std::vector<int64_t>& ids, const Tokenizer& tok, bool add) {
  if (add && tok.eos_id >= 0 && (ids.empty() || ids.back() != tok.eos_id)) ids.push_back(tok.eos_id);
}

// Truncates to n; keeps the original last token when it is a special end marker (EOS/[SEP]).
void truncate_keep_end(std::vector<int64_t>& ids, int64_t n, const Tokenizer& tok) {
  if (static_cast<int64_t>(ids.size()) <= n || n <= 0) return;
  int64_t last = ids.back();
  ids.resize(static_cast<size_t>(n));
  if (last == tok.eos_id || last == tok.token_to_id("[SEP]") || last == tok.token_to_id("</s>")) ids.back() = last;
}

// Causal LM example: prompt tokens get -100 labels.
Example causal(const std::string& prompt, const std::string& completion, const Tokenizer& tok,
               const TokenizeOptions& o) {
  Example ex;
  std::vector<int64_t> p = prompt.empty() ? std::vector<int64_t>{} : tok.encode(prompt, true);
  std::vector<int64_t> c = tok.encode(completion, prompt.empty());
  append_eos(c, tok, o.add_eos);
  if (static_cast<int64_t>(p.size()) >= o.max_length)
    throw RowError{str_cat("prompt is ", p.size(), " tokens, leaving none of max_length ", o.max_length,
                           " for the completion")};
  ex.input_ids = p;
  ex.input_ids.insert(ex.input_ids.end(), c.begin(), c.end());
  ex.labels.assign(p.size(), -100);
  ex.labels.insert(ex.labels.end(), c.begin(), c.end());
  if (static_cast<int64_t>(ex.input_ids.size()) > o.max_length) {
    ex.input_ids.resize(static_cast<size_t>(o.max_length));
    ex.labels.resize(static_cast<size_t>(o.max_length));
  }
  return ex;
}

// Whole-file text: paragraphs (split at blank lines) tokenized one by one, cut into blocks.
void chunk_text(const std::string& text, const std::string& where, const Tokenizer& tok, const TokenizeOptions& o,
                std::vector<Example>& out) {
  std::vector<int64_t> stream;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find("\n\n", pos);
    if (end == std::string::npos) end = text.size();
    std::string para = text.substr(pos, end - pos);
    pos = end + 2;
    if (para.find_first_not_of(" \t\r\n") == std::string::npos) continue;
    check_row_bytes(para.size(), "a paragraph");
    auto ids = tok.encode(para, true);
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  append_eos(stream, tok, o.add_eos);
  for (size_t s = 0; s + 1 < stream.size(); s += static_cast<size_t>(o.max_length)) {
    size_t e = std::min(stream.size(), s + static_cast<size_t>(o.max_length));
    Example ex;
    ex.input_ids.assign(stream.begin() + static_cast<std::ptrdiff_t>(s), stream.begin() + static_cast<std::ptrdiff_t>(e));
    ex.labels = ex.input_ids;
    ex.where = str_cat(where, "#", s / static_cast<size_t>(o.max_length));
    if (ex.input_ids.size() >= 2) out.push_back(std::move(ex));
  }
}

}  // namespace

Dataset tokenize_records(const std::vector<DataRecord>& rows, DataKind kind, const Tokenizer& tok,
                         const TokenizeOptions& o, const DataFormat& f, const std::string& source) {
  PEFT_CHECK(kind != DataKind::Auto, source, ": tokenize_records needs a concrete data kind");
  PEFT_CHECK(o.max_length >= 2, "max_length must be >= 2, got ", o.max_length);
  Dataset ds;
  ds.kind = kind;
  ds.source = source;
  ds.regression = f.regression && kind == DataKind::Classification;
  ds.pad_id = tok.pad_id >= 0 ? tok.pad_id : (tok.eos_id >= 0 ? tok.eos_id : 0);
  ds.stats.rows = static_cast<int64_t>(rows.size());
  BadRows bad(f.bad_rows, &ds.stats);

  bool collect_labels = kind == DataKind::Classification && !ds.regression && o.labels.empty();
  if (kind == DataKind::Classification && !ds.regression) {
    if (collect_labels) {
      std::set<std::string> seen;
      for (auto& r : rows) {
        try {
          seen.insert(field_label(r, f.label_column));
        } catch (const RowError&) {  // reported below, with the rest of the row
        }
      }
      ds.label_names = sorted_labels(std::move(seen));
    } else {
      ds.label_names = o.labels;
    }
  }

  int64_t tgt_len = o.max_target_length > 0 ? o.max_target_length : o.max_length;
  for (auto& r : rows) {
    try {
      switch (kind) {
        case DataKind::Text: {
          std::string t = field_text(r, f.text_column, true, false, nullptr, f.txt_whole_file);
          if (f.txt_whole_file) {
            chunk_text(t, r.where(), tok, o, ds.examples);
          } else {
            Example ex = causal("", t, tok, o);
            ex.where = r.where();
            ds.examples.push_back(std::move(ex));
          }
          break;
        }
        case DataKind::PromptCompletion:
        case DataKind::Alpaca: {
          std::string prompt, completion;
          if (kind == DataKind::Alpaca) {
            std::string ins = field_text(r, f.instruction_column, true, false);
            std::string in = field_text(r, f.input_column, false, true);
            prompt = alpaca_prompt(ins, in);
            completion = field_text(r, f.output_column, true, false);
          } else {
            prompt = field_text(r, f.prompt_column, true, true);
            completion = field_text(r, f.completion_column, true, false);
          }
          Example ex = causal(prompt, completion, tok, o);
          ex.where = r.where();
          ds.examples.push_back(std::move(ex));
          break;
        }
        case DataKind::Classification: {
          Example ex;
          std::string a = field_text(r, f.text_column, true, false);
          bool has_pair = false;
          std::string b = field_text(r, f.text_pair_column, false, false, &has_pair);
          if (has_pair) {
            ex.input_ids = tok.encode_pair(a, b, &ex.token_type_ids);
          } else {
            ex.input_ids = tok.encode(a, true);
          }
          if (ds.regression) {
            ex.target = field_number(r, f.label_column);
          } else {
            std::string lab = field_label(r, f.label_column);
            auto it = std::find(ds.label_names.begin(), ds.label_names.end(), lab);
            if (it == ds.label_names.end()) {
              std::string all;
              for (auto& l : ds.label_names) all += (all.empty() ? "" : ", ") + l;
              fail(r.where(), ": label '", lab, "' is not in the label set [", all, "]");
            }
            ex.label = it - ds.label_names.begin();
          }
          truncate_keep_end(ex.input_ids, o.max_length, tok);
          if (!ex.token_type_ids.empty()) ex.token_type_ids.resize(ex.input_ids.size());
          ex.where = r.where();
          ds.examples.push_back(std::move(ex));
          break;
        }
        case DataKind::Seq2Seq: {
          Example ex;
          ex.input_ids = tok.encode(field_text(r, f.source_column, true, false), true);
          ex.labels = tok.encode(field_text(r, f.target_column, true, false), true);
          if (tok.bos_id >= 0 && !ex.labels.empty() && ex.labels.front() == tok.bos_id)
            ex.labels.erase(ex.labels.begin());  // the decoder start token is the model's business
          append_eos(ex.input_ids, tok, o.add_eos);
          append_eos(ex.labels, tok, o.add_eos);
          truncate_keep_end(ex.input_ids, o.max_length, tok);
          truncate_keep_end(ex.labels, tgt_len, tok);
          ex.where = r.where();
          ds.examples.push_back(std::move(ex));
          break;
        }
        case DataKind::Auto:
          break;
      }
    } catch (const RowError& e) {
      bad.add(r.where(), e.reason);
    } catch (const Error& e) {
      std::string m = e.what();
      if (m.rfind(r.file, 0) == 0) throw;
      bad.add(r.where(), m);  // tokenizer failure (e.g. invalid UTF-8)
    }
  }
  return ds;
}

Dataset pack_dataset(const Dataset& ds, int64_t max_length) {
  PEFT_CHECK(ds.is_causal_lm(), ds.source, ": packing applies to causal-LM data only (format ",
             data_kind_name(ds.kind), ")");
  Dataset out = ds;
  out.examples.clear();
  Example cur;
  auto flush = [&] {
    if (!cur.input_ids.empty()) out.examples.push_back(std::move(cur));
    cur = Example();
  };
  for (auto& ex : ds.examples) {
    if (!cur.input_ids.empty() && static_cast<int64_t>(cur.input_ids.size() + ex.input_ids.size()) > max_length)
      flush();
    if (cur.input_ids.empty()) cur.where = ex.where;
    else if (cur.where.back() != '+') cur.where += "+";
    cur.input_ids.insert(cur.input_ids.end(), ex.input_ids.begin(), ex.input_ids.end());
    cur.labels.insert(cur.labels.end(), ex.labels.begin(), ex.labels.end());
  }
  flush();
  return out;
}

namespace data_detail {
std::vector<size_t> permutation(size_t n, uint64_t seed) {
  std::vector<size_t> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = i;
  SplitMix64 g{seed};
  for (size_t i = n; i > 1; --i) std::swap(p[i - 1], p[g.below(i)]);
  return p;
}
}  // namespace data_detail

std::pair<Dataset, Dataset> split_dataset(const Dataset& ds, double fraction, uint64_t seed) {
  PEFT_CHECK(fraction >= 0.0 && fraction < 1.0, "eval fraction must be in [0, 1), got ", fraction);
  size_t n = ds.size();
  size_t k = static_cast<size_t>(std::llround(fraction * static_cast<double>(n)));
  if (fraction > 0 && k == 0) k = 1;
  PEFT_CHECK(k < n || n == 0, ds.source, ": eval fraction ", fraction, " leaves no training examples (", n,
             " in all)");
  auto perm = data_detail::permutation(n, seed ^ 0x5157A11Dull);
  std::vector<char> held(n, 0);
  for (size_t i = 0; i < k; ++i) held[perm[i]] = 1;
  Dataset a = ds, b = ds;
  a.examples.clear();
  b.examples.clear();
  for (size_t i = 0; i < n; ++i) (held[i] ? b : a).examples.push_back(ds.examples[i]);
  return {std::move(a), std::move(b)};
}

namespace {
Dataset load_one(const std::string& path, const DataFormat& f, DataKind* kind, const Tokenizer& tok,
                 const TokenizeOptions& o) {
  DataStats st;
  auto rows = read_records(path, f, &st);
  if (*kind == DataKind::Auto) {
    PEFT_CHECK(!rows.empty(), path, ": no usable rows (", st.rows, " read, ", st.skipped, " skipped)");
    *kind = detect_data_kind(rows, f, path);
  }
  Dataset ds = tokenize_records(rows, *kind, tok, o, f, path);
  ds.stats.rows = st.rows;
  ds.stats.skipped += st.skipped;
  ds.stats.skipped_reasons.insert(ds.stats.skipped_reasons.begin(), st.skipped_reasons.begin(),
                                  st.skipped_reasons.end());
  data_detail::BadRows(f.bad_rows, &ds.stats).warn(path);
  PEFT_CHECK(!ds.examples.empty(), path, ": empty dataset (", ds.stats.rows, " rows read, ", ds.stats.skipped,
             " skipped as bad)");
  return ds;
}
}  // namespace

DataSplits load_data(const DataConfig& cfg, const Tokenizer& tok) {
  PEFT_CHECK(!cfg.train_file.empty(), "no training data file given");
  DataKind kind = cfg.format.kind;
  DataSplits out;
  out.train = load_one(cfg.train_file, cfg.format, &kind, tok, cfg.tokenize);
  if (!cfg.eval_file.empty()) {
    TokenizeOptions eo = cfg.tokenize;
    if (kind == DataKind::Classification) eo.labels = out.train.label_names;
    DataFormat ef = cfg.format;
    ef.txt_whole_file = cfg.format.txt_whole_file;
    out.eval = load_one(cfg.eval_file, ef, &kind, tok, eo);
  } else if (cfg.eval_fraction > 0) {
    std::tie(out.train, out.eval) = split_dataset(out.train, cfg.eval_fraction, cfg.seed);
  } else {
    out.eval = out.train;
    out.eval.examples.clear();
  }
  if (cfg.pack) {
    out.train = pack_dataset(out.train, cfg.tokenize.max_length);
    if (out.eval.size()) out.eval = pack_dataset(out.eval, cfg.tokenize.max_length);
  }
  return out;
}

}  // namespace peft
