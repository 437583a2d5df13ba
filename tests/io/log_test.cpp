// The library's message sink (include/peft/log.h): messages reach a program's own sink with
// their level, the previous sink comes back from set_log_sink, and library warnings (an unknown
// adapter-config field) go through it instead of stderr.
#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include "peft/log.h"
#include "peft/tuner.h"
#include "tuners/tuner_test_util.h"

using namespace peft;

namespace {
struct Captured {
  std::vector<std::pair<LogLevel, std::string>> messages;
};
}  // namespace

TEST(Log, SinkReceivesLevelsAndTheLibrarysWarnings) {
  Captured c;
  LogSink previous = set_log_sink([&](LogLevel l, const std::string& m) { c.messages.emplace_back(l, m); });
  log_info("step ", 3, " of ", 10);
  log_warning("x = ", 0.5);
  ASSERT_EQ(c.messages.size(), 2u);
  EXPECT_EQ(c.messages[0], std::make_pair(LogLevel::Info, std::string("step 3 of 10")));
  EXPECT_EQ(c.messages[1], std::make_pair(LogLevel::Warning, std::string("x = 0.5")));
  // A field of a newer peft version is a warning, not an error, in the library.
  auto pm = test::fixture_peft_model("llama");
  pm->add_adapter("default", method_config("lora", {{"a_field_of_a_newer_peft", 1}}));
  ASSERT_EQ(c.messages.size(), 3u);
  EXPECT_EQ(c.messages[2].first, LogLevel::Warning);
  EXPECT_NE(c.messages[2].second.find("a_field_of_a_newer_peft"), std::string::npos) << c.messages[2].second;
  // Restoring: the sink set above comes back, and nullptr is the default (stderr) again.
  LogSink mine = set_log_sink(std::move(previous));
  ASSERT_TRUE(mine);
  mine(LogLevel::Info, "direct");
  EXPECT_EQ(c.messages.size(), 4u);
  log_info("to the previous sink, not to the captured one");
  EXPECT_EQ(c.messages.size(), 4u);
}
