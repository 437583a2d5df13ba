// Greedy generation on the bundled stories260K against llama2.c's published output
// (llama2.c doc/stories260K.md, quoted in assets/stories260K/SOURCE.md): "Once upon a time,
// there was a little girl named Lily. She loved to play outside in the park. One day, she saw
// a big, red ball."
#include <gtest/gtest.h>

#include "test_util.h"

TEST(GenerateCli, GreedyStories260KMatchesLlama2cPublishedText) {
  std::string out;
  int rc = peft::test::run_cli("generate --model " + peft::test::source_path("assets/stories260K") +
                                   " --prompt 'Once upon a time' --max-new-tokens 40 --temperature 0",
                               &out);
  ASSERT_EQ(rc, 0) << out;
  const std::string expect =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw "
      "a big, red ball.";
  EXPECT_EQ(out.substr(0, expect.size()), expect) << out;
}

TEST(GenerateCli, MissingModelIsAClearError) {
  std::string out;
  int rc = peft::test::run_cli("generate --model /nonexistent/model --prompt hi", &out);
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("/nonexistent/model"), std::string::npos) << out;
}
