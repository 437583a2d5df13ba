// "Did you mean" (src/io/suggest.h): the optimal-string-alignment distance on textbook cases,
// the typo threshold, and the messages that use it (peft train's unknown --option, the library's
// warning for an unknown adapter-config field).
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "io/suggest.h"
#include "peft/log.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

using namespace peft;

TEST(Suggest, EditDistanceClosedForms) {
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);  // Levenshtein's example: k->s, e->i, +g
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(edit_distance("abc", "abc"), 0u);
  EXPECT_EQ(edit_distance("ab", "ba"), 1u);  // one adjacent transposition
  // Optimal string alignment edits no substring twice: "ca" -> "abc" is 3 (true Damerau: 2).
  EXPECT_EQ(edit_distance("ca", "abc"), 3u);
  EXPECT_EQ(edit_distance("lora_alpah", "lora_alpha"), 1u);
  EXPECT_EQ(edit_distance("a", "b"), edit_distance("b", "a"));
}

TEST(Suggest, ClosestNameWithinTheTypoThreshold) {
  const std::vector<std::string> keys = {"r", "lora_alpha", "lora_dropout", "target_modules"};
  EXPECT_EQ(closest_name("lora_alpah", keys), "lora_alpha");
  EXPECT_EQ(closest_name("lora_dropuot", keys), "lora_dropout");
  EXPECT_EQ(closest_name("target_module", keys), "target_modules");
  EXPECT_EQ(closest_name("learning_rate", keys), "");  // no key is a typo of it
  // Threshold max(1, min(3, |name| / 4)): 10 letters allow 2 edits, not 3.
  EXPECT_EQ(closest_name("lxra_alpah", keys), "lora_alpha");
  EXPECT_EQ(closest_name("lxra_xlpah", keys), "");
  EXPECT_EQ(did_you_mean("lora_alpah", keys, "--"), " (did you mean '--lora_alpha'?)");
  EXPECT_EQ(did_you_mean("zzz", keys), "");
}

TEST(Suggest, PeftTrainNamesTheMethodKeyForAMisspeltOption) {
  std::string out;
  int rc = test::run_cli("train --model " + test::source_path("assets/stories260K") + " --train " +
                             test::source_path("assets/e2e/validation.jsonl") + " --method lora --lora_alpah 16" +
                             " --max_steps 1 --output-dir " + test::temp_dir("suggest_train"),
                         &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("unknown option --lora_alpah"), std::string::npos) << out;
  EXPECT_NE(out.find("did you mean '--lora_alpha'?"), std::string::npos) << out;
}

TEST(Suggest, TheLibraryWarnsWithASuggestionAndKeepsGoing) {
  std::vector<std::string> warnings;
  LogSink previous = set_log_sink([&](LogLevel l, const std::string& m) {
    if (l == LogLevel::Warning) warnings.push_back(m);
  });
  auto pm = test::fixture_peft_model("llama");
  pm->add_adapter("default", method_config("lora", {{"lora_dropuot", 0.1}}));
  set_log_sink(std::move(previous));
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("unknown field 'lora_dropuot' for LORA ignored (did you mean 'lora_dropout'?)"),
            std::string::npos)
      << warnings[0];
  EXPECT_EQ(pm->adapter("default").config["lora_dropout"], 0.0);  // the misspelt value was not applied
}
