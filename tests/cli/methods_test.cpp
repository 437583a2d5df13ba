// `peft methods`: every registered method has a card (family of the survey's five, a paper),
// and the trainable count and merge support it prints are the model's: LoRA's count on the
// bundled stories260K equals the closed form from its llama2.c header, prompt tuning does not merge.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "peft/tuner.h"
#include "test_util.h"

using namespace peft;
using peft::test::run_cli;
using peft::test::source_path;

TEST(MethodCatalog, EveryRegisteredMethodHasAFamilyAndPaper) {
  const std::set<std::string> families = {"additive", "partial", "reparameterized", "hybrid", "unified"};
  for (auto& n : method_names()) {
    auto* c = method_card(n);
    ASSERT_NE(c, nullptr) << n << " has no card in src/tuners/catalog.cpp";
    EXPECT_TRUE(families.count(c->family)) << n << ": " << c->family;
    EXPECT_TRUE(std::regex_search(c->paper, std::regex("(19|20)[0-9][0-9]"))) << n << ": no year in " << c->paper;
  }
  for (auto& c : method_cards()) EXPECT_NO_THROW(method_config(c.name)) << "card without a method: " << c.name;
}

TEST(MethodsCli, LoraCountIsClosedFormAndMergeSupportIsMeasured) {
  const std::string model = source_path("assets/stories260K");
  std::string out;
  ASSERT_EQ(run_cli("methods --json --model " + model + " --methods lora,prompt-tuning,ia3 --r 4", &out), 0) << out;
  auto j = nlohmann::json::parse(out.substr(out.find('{')));
  // llama2.c header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len (int32).
  std::ifstream f(model + "/stories260K.bin", std::ios::binary);
  int32_t h[7];
  ASSERT_TRUE(f.read(reinterpret_cast<char*>(h), sizeof h));
  const int64_t D = h[0], L = h[2], H = h[3], KV = h[4], r = 4, kv_dim = D / H * KV;
  // LoRA's default targets q_proj [D -> D] and v_proj [D -> kv_dim]: A [r, in] + B [out, r] each.
  const int64_t lora = L * ((r * D + D * r) + (r * D + kv_dim * r));
  std::map<std::string, nlohmann::json> by;
  for (auto& m : j["methods"]) by[m["name"]] = m;
  ASSERT_EQ(by.size(), 3u);
  EXPECT_EQ(by["lora"]["trainable"].get<int64_t>(), lora);
  EXPECT_EQ(by["lora"]["family"], "reparameterized");
  EXPECT_TRUE(by["lora"]["merges"].get<bool>());
  EXPECT_FALSE(by["prompt-tuning"]["merges"].get<bool>());
  EXPECT_EQ(by["prompt-tuning"]["trainable"].get<int64_t>(), 8 * D);  // preset: 8 virtual tokens
  EXPECT_TRUE(by["ia3"]["merges"].get<bool>());
  EXPECT_NE(run_cli("methods --json --model " + model + " --methods lora --no_such_field 3", &out), 0);
  EXPECT_NE(out.find("no_such_field"), std::string::npos) << out;
}
