// ProgressBar and JsonlLogger.
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "peft/error.h"
#include "peft/log.h"
#include "peft/io.h"
#include "io/lines.h"
#include "peft/report.h"

namespace peft {

ProgressBar::ProgressBar(int64_t total_steps, ProgressOptions opt)
    : total_(total_steps), opt_(opt), start_(std::chrono::steady_clock::now()) {
  if (!opt_.out) opt_.out = &std::cerr;
  tty_ = opt_.tty < 0 ? (isatty(fileno(stderr)) != 0 && opt_.out == &std::cerr) : opt_.tty == 1;
  if (opt_.every < 1) opt_.every = 1;
}

std::string ProgressBar::format_duration(double s) {
  if (!(s >= 0) || std::isinf(s)) return "--:--";
  int64_t t = static_cast<int64_t>(std::llround(s));
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%02lld:%02lld:%02lld", static_cast<long long>(t / 3600),
                  static_cast<long long>(t / 60 % 60), static_cast<long long>(t % 60));
  else
    std::snprintf(buf, sizeof buf, "%02lld:%02lld", static_cast<long long>(t / 60), static_cast<long long>(t % 60));
  return buf;
}

std::string ProgressBar::line(int64_t step, double loss, double tps, double eta, const std::string& extra) const {
  double frac = total_ > 0 ? std::min(1.0, std::max(0.0, static_cast<double>(step) / static_cast<double>(total_))) : 0;
  int filled = static_cast<int>(frac * opt_.width);
  std::string bar = std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(opt_.width - filled), '-');
  char buf[256];
  std::snprintf(buf, sizeof buf, "step %lld/%lld [%s] loss %.4f | %.0f tok/s | ETA %s", static_cast<long long>(step),
                static_cast<long long>(total_), bar.c_str(), loss, tps, format_duration(eta).c_str());
  std::string s = buf;
  if (!extra.empty()) s += " | " + extra;
  return s;
}

void ProgressBar::update(int64_t step, double loss, int64_t tokens, const std::string& extra) {
  auto now = std::chrono::steady_clock::now();
  if (first_step_ < 0) first_step_ = step;  // a resumed run starts past step 1
  tokens_ += tokens;
  double elapsed = std::chrono::duration<double>(now - start_).count();
  int64_t done = step - first_step_ + 1;
  double tps = elapsed > 0 ? static_cast<double>(tokens_) / elapsed : 0.0;
  double eta = elapsed > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_ - step) : -1;
  std::ostream& o = *opt_.out;
  if (tty_) {
    o << "\r" << line(step, loss, tps, eta, extra) << "\x1b[K" << std::flush;
    open_line_ = true;
    if (step >= total_) finish();
  } else if (step == first_step_ || step % opt_.every == 0 || step >= total_) {
    o << line(step, loss, tps, eta, extra) << "\n" << std::flush;
  }
}

void ProgressBar::finish() {
  if (open_line_) *opt_.out << "\n" << std::flush;
  open_line_ = false;
}

JsonlLogger::JsonlLogger(const std::string& path, bool append) : path_(path) {
  std::error_code ec;
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  f_ = std::fopen(path.c_str(), append ? "ab" : "wb");
  PEFT_CHECK(f_ != nullptr, path, ": cannot open for writing the metrics log");
}

JsonlLogger::~JsonlLogger() {
  if (f_) std::fclose(f_);
}

void JsonlLogger::log(const nlohmann::json& record) {
  PEFT_CHECK(record.is_object(), path_, ": a log record must be a JSON object, got ", record.type_name());
  std::string s = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  long before = std::ftell(f_);
  if (std::fwrite(s.data(), 1, s.size(), f_) == s.size() && std::fflush(f_) == 0) return;
  int err = errno;
  // Cut a partly written record off again, so the log stays a sequence of whole lines.
  std::clearerr(f_);
  if (before >= 0 && ::ftruncate(fileno(f_), before) == 0) std::fseek(f_, before, SEEK_SET);
  fail(path_, ": write failed: ", std::strerror(err), " (the records logged before are kept)");
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::string bytes = read_file(path);
  std::vector<nlohmann::json> out;
  // A run killed in the middle of an append leaves an unterminated last record: drop it.
  if (!bytes.empty() && bytes.back() != '\n') {
    size_t cut = bytes.rfind('\n');
    cut = cut == std::string::npos ? 0 : cut + 1;
    if (!nlohmann::json::accept(bytes.substr(cut))) {
      log_warning(path, ": dropping an incomplete last record (", bytes.size() - cut,
                  " bytes, a run interrupted while logging)");
      bytes.resize(cut);
    }
  }
  for_each_nonblank_line(bytes, [&](int64_t line, const std::string& s) {
    try {
      out.push_back(nlohmann::json::parse(s));
    } catch (const std::exception& e) {
      fail(path, ":", line, ": invalid JSON: ", e.what());
    }
  });
  return out;
}

}  // namespace peft
