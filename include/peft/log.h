// The library's messages (warnings such as an unknown adapter-config field or skipped data
// rows; notes such as "resumed from ..."): one sink, stderr by default, that a program embedding
// peft.cpp can redirect to its own logger.
//
//   peft::set_log_sink([](peft::LogLevel level, const std::string& msg) { my_logger(level, msg); });
//   peft::set_log_sink(nullptr);  // back to stderr
#pragma once
#include <functional>
#include <string>

#include "peft/error.h"

namespace peft {

enum class LogLevel { Info, Warning };

/// Receives one message (no trailing newline). Called under a lock: sinks need no locking of their
/// own, and must not log themselves.
using LogSink = std::function<void(LogLevel, const std::string&)>;

/// Replaces the sink and returns the previous one; nullptr restores the default, which writes
/// each message as a line to stderr ("warning: " before warnings).
LogSink set_log_sink(LogSink sink);

void log_message(LogLevel level, const std::string& message);

template <class... Args>
void log_info(const Args&... args) {
  log_message(LogLevel::Info, str_cat(args...));
}
template <class... Args>
void log_warning(const Args&... args) {
  log_message(LogLevel::Warning, str_cat(args...));
}

}  // namespace peft
