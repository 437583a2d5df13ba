// Reading data files into DataRecords: JSONL, JSON arrays, CSV/TSV (RFC 4180), plain text.
#include <iostream>

#include "peft/data.h"
#include "peft/error.h"
#include "peft/log.h"
#include "peft/io.h"
#include "io/lines.h"
#include "tokenizer/unicode.h"
#include "train/data_internal.h"

namespace peft {

std::string DataRecord::where() const { return str_cat(file, ":", line); }

namespace data_detail {

void BadRows::add(const std::string& where, const std::string& reason) {
  std::string msg = where + ": " + reason;
  if (policy_ == BadRowPolicy::Fail) throw Error(msg);
  ++stats_->skipped;
  if (stats_->skipped_reasons.size() < 5) stats_->skipped_reasons.push_back(msg);
}

void BadRows::warn(const std::string& file) const {
  if (stats_->skipped == 0) return;
  log_warning(file, ": skipped ", stats_->skipped, " bad row", stats_->skipped == 1 ? "" : "s", " (first: ",
              stats_->skipped_reasons.front(), ")");
}

}  // namespace data_detail

namespace {

using data_detail::BadRows;

std::string file_type_of(const std::string& path, const DataFormat& fmt) {
  if (!fmt.file_type.empty()) {
    for (const char* t : {"jsonl", "json", "csv", "tsv", "txt"})
      if (fmt.file_type == t) return t;
    fail(path, ": unknown data file type '", fmt.file_type, "' (use jsonl, json, csv, tsv or txt)");
  }
  auto dot = path.find_last_of('.');
  std::string ext = dot == std::string::npos ? "" : path.substr(dot + 1);
  for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (ext == "jsonl" || ext == "ndjson") return "jsonl";
  if (ext == "json" || ext == "csv" || ext == "tsv" || ext == "txt") return ext;
  fail(path, ": cannot tell the data format from the extension '.", ext,
       "' (expected .jsonl, .json, .csv, .tsv or .txt; or set the file type)");
}

void read_jsonl(const std::string& path, const std::string& bytes, BadRows& bad, std::vector<DataRecord>& out,
                DataStats& st) {
  for_each_nonblank_line(bytes, [&](int64_t line, const std::string& s) {
    ++st.rows;
    std::string where = str_cat(path, ":", line);
    if (tok::utf8_invalid_at(s) != std::string::npos) {
      bad.add(where, "invalid UTF-8");
      return;
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(s);
    } catch (const std::exception& e) {
      bad.add(where, str_cat("invalid JSON: ", e.what()));
      return;
    }
    if (!j.is_object()) {
      bad.add(where, "expected a JSON object");
      return;
    }
    out.push_back({std::move(j), path, line});
  });
}

void read_json_array(const std::string& path, const std::string& bytes, BadRows& bad,
                     std::vector<DataRecord>& out, DataStats& st) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(bytes);
  } catch (const std::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
  PEFT_CHECK(j.is_array(), path, ": expected a JSON array of objects (use .jsonl for one object a line)");
  for (size_t i = 0; i < j.size(); ++i) {
    ++st.rows;
    if (!j[i].is_object()) {
      bad.add(str_cat(path, ":", i + 1), "expected a JSON object");
      continue;
    }
    out.push_back({std::move(j[i]), path, static_cast<int64_t>(i + 1)});
  }
}

// One CSV record starting at `pos` (RFC 4180 when quoting). Advances pos and line; returns
// false with *err set on a syntax error (pos then skips to the end of the physical line).
bool csv_record(const std::string& b, size_t& pos, int64_t& line, char sep, bool quoting,
                std::vector<std::string>& fields, std::string* err) {
  fields.assign(1, std::string());
  bool quoted = false, after_quote = false;
  while (pos < b.size()) {
    char c = b[pos];
    if (quoted) {
      if (c == '"') {
        if (pos + 1 < b.size() && b[pos + 1] == '"') {
          fields.back() += '"';
          pos += 2;
          continue;
        }
        quoted = false;
        after_quote = true;
      } else {
        if (c == '\n') ++line;
        fields.back() += c;
      }
      ++pos;
      continue;
    }
    if (c == '\n' || (c == '\r' && pos + 1 < b.size() && b[pos + 1] == '\n') || (c == '\r' && pos + 1 == b.size())) {
      pos += c == '\r' ? 2 : 1;
      ++line;
      return true;
    }
    if (c == sep) {
      fields.emplace_back();
      after_quote = false;
    } else if (after_quote) {
      *err = str_cat("unexpected character '", c, "' after a closing quote");
    } else if (quoting && c == '"') {
      if (!fields.back().empty()) {
        *err = "quote inside an unquoted field (quote the whole field and double the quote)";
      } else {
        quoted = true;
      }
    } else {
      fields.back() += c;
    }
    ++pos;
    if (!err->empty()) {
      size_t nl = b.find('\n', pos);
      pos = nl == std::string::npos ? b.size() : nl + 1;
      ++line;
      return false;
    }
  }
  if (quoted) {
    *err = "unterminated quoted field";
    return false;
  }
  ++line;
  return true;
}

void read_csv(const std::string& path, const std::string& bytes, char sep, bool quoting, BadRows& bad,
              std::vector<DataRecord>& out, DataStats& st) {
  size_t pos = 0;
  int64_t line = 1;
  std::vector<std::string> header, fields;
  std::string err;
  if (bytes.compare(0, 3, "\xEF\xBB\xBF") == 0) pos = 3;  // UTF-8 byte order mark
  PEFT_CHECK(pos < bytes.size(), path, ": empty file (expected a header row)");
  if (!csv_record(bytes, pos, line, sep, quoting, header, &err)) fail(path, ":1: header: ", err);
  for (auto& h : header) {
    PEFT_CHECK(tok::utf8_invalid_at(h) == std::string::npos, path, ":1: header: invalid UTF-8");
    if (!h.empty() && h.back() == '\r') h.pop_back();
  }
  while (pos < bytes.size()) {
    int64_t start = line;
    err.clear();
    bool ok = csv_record(bytes, pos, line, sep, quoting, fields, &err);
    if (ok && fields.size() == 1 && fields[0].empty()) continue;  // blank line
    ++st.rows;
    std::string where = str_cat(path, ":", start);
    if (!ok) {
      bad.add(where, "unparsable CSV line: " + err);
      if (err == "unterminated quoted field") break;
      continue;
    }
    if (fields.size() != header.size()) {
      bad.add(where, str_cat("expected ", header.size(), " fields (as in the header), got ", fields.size()));
      continue;
    }
    nlohmann::json obj = nlohmann::json::object();
    bool valid = true;
    for (size_t i = 0; i < fields.size() && valid; ++i) {
      if (tok::utf8_invalid_at(fields[i]) != std::string::npos) {
        bad.add(where, str_cat("column '", header[i], "': invalid UTF-8"));
        valid = false;
      } else {
        obj[header[i]] = fields[i];
      }
    }
    if (valid) out.push_back({std::move(obj), path, start});
  }
}

void read_txt(const std::string& path, const std::string& bytes, const DataFormat& fmt, BadRows& bad,
              std::vector<DataRecord>& out, DataStats& st) {
  if (fmt.txt_whole_file) {
    ++st.rows;
    size_t at = tok::utf8_invalid_at(bytes);
    if (at != std::string::npos) {
      int64_t line = 1 + std::count(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(at), '\n');
      bad.add(str_cat(path, ":", line), "invalid UTF-8");
      return;
    }
    nlohmann::json obj;
    obj[fmt.text_column] = bytes;
    out.push_back({std::move(obj), path, 1});
    return;
  }
  for_each_nonblank_line(bytes, [&](int64_t line, const std::string& s) {
    ++st.rows;
    if (tok::utf8_invalid_at(s) != std::string::npos) {
      bad.add(str_cat(path, ":", line), "invalid UTF-8");
      return;
    }
    nlohmann::json obj;
    obj[fmt.text_column] = s;
    out.push_back({std::move(obj), path, line});
  });
}

}  // namespace

std::vector<DataRecord> read_records(const std::string& path, const DataFormat& fmt, DataStats* stats) {
  DataStats local;
  DataStats& st = stats ? *stats : local;
  BadRows bad(fmt.bad_rows, &st);
  std::string type = file_type_of(path, fmt);
  std::string bytes = read_file(path);
  std::vector<DataRecord> out;
  if (type == "jsonl") read_jsonl(path, bytes, bad, out, st);
  else if (type == "json") read_json_array(path, bytes, bad, out, st);
  else if (type == "csv") read_csv(path, bytes, ',', fmt.csv_quoting, bad, out, st);
  else if (type == "tsv") read_csv(path, bytes, '\t', fmt.csv_quoting, bad, out, st);
  else read_txt(path, bytes, fmt, bad, out, st);
  return out;
}

}  // namespace peft
