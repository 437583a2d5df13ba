#include "peft/log.h"

#include <iostream>
#include <mutex>
#include <utility>

namespace peft {
namespace {
std::mutex& log_mutex() {
  static std::mutex m;
  return m;
}
LogSink& current_sink() {
  static LogSink s;
  return s;
}
}  // namespace

LogSink set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(log_mutex());
  return std::exchange(current_sink(), std::move(sink));
}

void log_message(LogLevel level, const std::string& message) {
  std::lock_guard<std::mutex> lock(log_mutex());
  if (current_sink()) {
    current_sink()(level, message);
    return;
  }
  std::cerr << (level == LogLevel::Warning ? "warning: " : "") << message << std::endl;
}

}  // namespace peft
