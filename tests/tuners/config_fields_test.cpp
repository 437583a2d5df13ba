// Typed adapter configs (include/peft/extend/config_fields.h): a method's field table is its
// defaults (equal, key for key, to what Python peft 0.13.2 saved for LoRA and IA3), its type and
// range checks (each refusal names the field and leaves the model as it was) and the
// description `peft methods --json` / `--fields` print.
#include <gtest/gtest.h>

#include <set>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using namespace peft::test;

namespace {

std::vector<TunerPtr> tuners_with_tables() {
  std::vector<TunerPtr> out;
  for (auto& t : registered_tuners())
    if (!find_tuner(t)->fields().empty()) out.push_back(find_tuner(t));
  return out;
}

/// A value of the wrong type for a field of type t (undefined for Any).
nlohmann::json wrong_type(FieldType t) {
  switch (t) {
    case FieldType::Bool: return "yes";
    case FieldType::Int: return 1.5;
    case FieldType::Number: return "1";
    case FieldType::String: return 3;
    case FieldType::Names: return nlohmann::json::array({1, 2});
    case FieldType::Ints: return "0";
    case FieldType::Object: return 3;
    case FieldType::Any: break;
  }
  return nlohmann::json(nlohmann::json::value_t::discarded);
}

/// The peft keys (peft_type included) of an adapter_config.json saved by Python peft.
std::set<std::string> saved_keys(const std::string& dir) {
  std::set<std::string> k;
  const auto cfg = read_json(source_path(dir) + "/adapter_config.json");  // named: items() refers to it
  for (auto& kv : cfg.items()) k.insert(kv.key());
  return k;
}

}  // namespace

TEST(ConfigFields, EveryTunerDeclaresATable) {
  std::set<std::string> have;
  for (auto& t : tuners_with_tables()) have.insert(t->peft_type());
  for (auto& t : registered_tuners()) EXPECT_TRUE(have.count(find_tuner(t)->peft_type())) << t << " has no field table";
  EXPECT_GE(have.size(), 25u);
}

// One list of the keys a config may hold: the defaults' keys and the extension keys, once each.
TEST(ConfigFields, ConfigKeysAreTheDefaultsAndTheExtensionKeys) {
  for (auto& t : tuners_with_tables()) {
    auto keys = t->config_keys();
    std::set<std::string> want;
    const auto d = t->defaults();
    for (auto& kv : d.items()) want.insert(kv.key());
    for (auto& k : t->extension_keys()) want.insert(k);
    EXPECT_EQ(std::set<std::string>(keys.begin(), keys.end()), want) << t->peft_type();
    EXPECT_EQ(keys.size(), want.size()) << t->peft_type() << ": a key listed twice";
  }
}

// MAM's table is its parts': a field of the parallel adapter or of prefix tuning is checked by
// MAM with the same rule, at MAM's defaults.
TEST(ConfigFields, MamCombinesItsPartsTables) {
  auto mam = find_tuner("MAM")->defaults();
  EXPECT_EQ(mam["adapter_type"], "parallel");
  EXPECT_EQ(mam["scaling"], 4.0);
  EXPECT_EQ(mam["num_virtual_tokens"], 30);
  EXPECT_EQ(mam["prefix_layout"], "paper");
  for (auto& part : {"BOTTLENECK", "PREFIX_TUNING"})
    for (auto& f : find_tuner(part)->fields())
      if (f.name != "prefix_gate") EXPECT_TRUE(mam.contains(f.name)) << part << "." << f.name;
  auto pm = fixture_peft_model("llama");
  auto msg = error_of([&] { pm->add_adapter("m", {{"peft_type", "MAM"}, {"dropout", 1.5}}); });
  EXPECT_NE(msg.find("field 'dropout' (MAM) must be a number in [0, 1)"), std::string::npos) << msg;
  msg = error_of([&] { pm->add_adapter("m", {{"peft_type", "MAM"}, {"adapter_type", "houlsby"}}); });
  EXPECT_TRUE(pm->adapters().empty());
  EXPECT_NE(msg.find("field 'adapter_type' (MAM) must be one of \"parallel\""), std::string::npos) << msg;
}

TEST(ConfigFields, TheTableIsTheDefaultsAndTheExtensionKeys) {
  for (auto& t : tuners_with_tables()) {
    auto table = t->fields();
    std::set<std::string> names, peft_names = {"peft_type"}, ours;
    for (auto& f : table) {
      EXPECT_TRUE(names.insert(f.name).second) << t->peft_type() << ": field '" << f.name << "' twice";
      (f.ours ? ours : peft_names).insert(f.name);
    }
    auto d = t->defaults();
    std::set<std::string> dk;
    for (auto& kv : d.items()) dk.insert(kv.key());
    EXPECT_EQ(dk, peft_names) << t->peft_type();
    auto ext = t->extension_keys();
    EXPECT_EQ(std::set<std::string>(ext.begin(), ext.end()), ours) << t->peft_type();
    // Every default (and every extension field's assumed value) passes the table's checks.
    auto all = d;
    for (auto& f : table) {
      if (f.ours) all[f.name] = f.default_value;
      if (f.default_value.is_null() && !f.nullable && f.type != FieldType::Any) all.erase(f.name);  // required
    }
    EXPECT_NO_THROW(check_fields(t->peft_type(), table, all)) << t->peft_type();
  }
}

// The independent reference: the keys Python peft 0.13.2 wrote (tests/fixtures/peft, wave2).
TEST(ConfigFields, PeftFieldsAreTheOnesPeftSaves) {
  auto peft_keys = [](const std::string& type) {
    std::set<std::string> k;
    const auto d = find_tuner(type)->defaults();
    for (auto& kv : d.items()) k.insert(kv.key());
    return k;
  };
  EXPECT_EQ(peft_keys("LORA"), saved_keys("tests/fixtures/peft/adapters/llama/lora"));
  EXPECT_EQ(peft_keys("IA3"), saved_keys("tests/fixtures/wave2/adapters/gpt2/ia3_default"));
  EXPECT_EQ(peft_keys("VERA"), saved_keys("tests/fixtures/wave2/adapters/llama/vera_proj"));
  EXPECT_EQ(peft_keys("LOHA"), saved_keys("tests/fixtures/peft/adapters/llama/loha"));
  EXPECT_EQ(peft_keys("LOKR"), saved_keys("tests/fixtures/peft/adapters/llama/lokr"));
  EXPECT_EQ(peft_keys("ADALORA"), saved_keys("tests/fixtures/peft/adapters/llama/adalora"));
  EXPECT_EQ(peft_keys("PROMPT_TUNING"), saved_keys("tests/fixtures/peft/adapters/llama/prompt_tuning"));
  EXPECT_EQ(peft_keys("P_TUNING"), saved_keys("tests/fixtures/peft/adapters/llama/p_tuning"));
  EXPECT_EQ(peft_keys("PREFIX_TUNING"), saved_keys("tests/fixtures/peft/adapters/llama/prefix_tuning"));
}

TEST(ConfigFields, EveryFieldRefusesTheWrongTypeByName) {
  for (auto& t : tuners_with_tables()) {
    auto table = t->fields();
    auto base = t->defaults();
    for (auto& f : table)  // required fields (no default) get a valid value
      if (f.default_value.is_null() && !f.nullable && f.type == FieldType::Int) base[f.name] = 4;
    for (auto& f : table) {
      auto bad = wrong_type(f.type);
      if (bad.is_discarded()) continue;
      auto cfg = base;
      cfg[f.name] = bad;
      auto msg = error_of([&] { check_fields(t->peft_type(), table, cfg); });
      EXPECT_NE(msg.find("field '" + f.name + "' (" + t->peft_type() + ") must be"), std::string::npos)
          << t->peft_type() << "." << f.name << ": " << msg;
      if (!f.nullable && f.type != FieldType::Any) {
        cfg[f.name] = nullptr;
        EXPECT_THROW(check_fields(t->peft_type(), table, cfg), Error) << t->peft_type() << "." << f.name << " = null";
      }
    }
  }
}

TEST(ConfigFields, LoraRefusalsNameTheFieldAndLeaveTheModelAlone) {
  auto in = fixture_input("llama");
  auto pm = fixture_peft_model("llama");
  const auto base = logits_of(*pm, in);
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {{{"r", 0}}, "field 'r' (LORA) must be an integer >= 1, got 0"},
      {{{"r", "8"}}, "field 'r' (LORA) must be an integer, got \"8\""},
      {{{"lora_dropout", 1.0}}, "field 'lora_dropout' (LORA) must be a number in [0, 1), got 1.0"},
      {{{"bias", "some"}}, "field 'bias' (LORA) must be one of \"none\", \"all\", \"lora_only\", got \"some\""},
      {{{"init_lora_weights", "xavier"}}, "field 'init_lora_weights' (LORA) must be one of true, false, \"gaussian\""},
      {{{"use_dora", "yes"}}, "field 'use_dora' (LORA) must be true or false, got \"yes\""},
      {{{"target_modules", 5}}, "field 'target_modules' (LORA) must be a list of module names or one string (a regex) or null"},
      {{{"delta_lora_start", -1}}, "field 'delta_lora_start' (LORA) must be an integer >= 0, got -1"},
  };
  for (auto& [over, want] : cases) {
    auto msg = error_of([&] { pm->add_adapter("bad", method_config("lora", over)); });
    EXPECT_NE(msg.find(want), std::string::npos) << over.dump() << ": " << msg;
    EXPECT_TRUE(pm->adapters().empty()) << over.dump();
  }
  EXPECT_TRUE(torch::equal(logits_of(*pm, in), base));
  EXPECT_NO_THROW(pm->add_adapter("ok", method_config("lora", {{"r", 4}, {"lora_alpha", 16.5}, {"lora_dropout", 0}})));
}

TEST(ConfigFields, OpenBoundsAreNamed) {
  auto pm = fixture_peft_model("llama");
  auto msg = error_of([&] { pm->add_adapter("s", method_config("fish-mask", {{"density", 0}})); });
  EXPECT_NE(msg.find("field 'density' (FISH_MASK) must be a number in (0, 1], got 0"), std::string::npos) << msg;
  msg = error_of([&] { pm->add_adapter("s", method_config("diff-pruning", {{"temperature", 0.0}})); });
  EXPECT_NE(msg.find("field 'temperature' (DIFF_PRUNING) must be a number > 0, got 0.0"), std::string::npos) << msg;
  EXPECT_NO_THROW(check_fields("FISH_MASK", find_tuner("FISH_MASK")->fields(), {{"density", 1}}));
  EXPECT_TRUE(pm->adapters().empty());
}

TEST(ConfigFields, ARequiredFieldIsNamed) {
  auto pm = fixture_peft_model("llama");
  auto msg = error_of([&] { pm->add_adapter("p", {{"peft_type", "PROMPT_TUNING"}}); });
  EXPECT_NE(msg.find("field 'num_virtual_tokens' (PROMPT_TUNING) is required: an integer >= 1"), std::string::npos) << msg;
  msg = error_of([&] { pm->add_adapter("p", method_config("p-tuning", {{"num_virtual_tokens", 4}, {"encoder_dropout", 2}})); });
  EXPECT_NE(msg.find("field 'encoder_dropout' (P_TUNING) must be a number in [0, 1], got 2"), std::string::npos) << msg;
  EXPECT_TRUE(pm->adapters().empty());
}

// AdaLoRA's schedule fields were read at the first optimizer step: deltaT 0 would have been a
// division by zero (step % deltaT) there, a string a json type_error. Now refused when added.
TEST(ConfigFields, AdaloraScheduleFieldsAreCheckedWhenAdded) {
  auto pm = fixture_peft_model("llama");
  const std::vector<std::pair<nlohmann::json, std::string>> cases = {
      {{{"deltaT", 0}}, "field 'deltaT' (ADALORA) must be an integer >= 1, got 0"},
      {{{"tinit", "10"}}, "field 'tinit' (ADALORA) must be an integer, got \"10\""},
      {{{"beta1", 1.5}}, "field 'beta1' (ADALORA) must be a number in [0, 1], got 1.5"},
      {{{"init_r", 4}, {"target_r", 8}}, "field 'target_r' (8) must be <= init_r (4)"},
  };
  for (auto& [over, want] : cases) {
    auto msg = error_of([&] { pm->add_adapter("bad", method_config("adalora", over)); });
    EXPECT_NE(msg.find(want), std::string::npos) << over.dump() << ": " << msg;
    EXPECT_TRUE(pm->adapters().empty());
  }
}

TEST(ConfigFields, MethodsCommandDescribesTheTable) {
  std::string out;
  ASSERT_EQ(run_cli("methods --methods lora,hadamard --json true", &out), 0) << out;
  auto j = nlohmann::json::parse(out.substr(out.find('{')));
  ASSERT_EQ(j["methods"].size(), 2u);
  const auto& fields = j["methods"][0]["fields"];
  ASSERT_TRUE(fields.is_array()) << j.dump();
  bool saw_r = false;
  for (auto& f : fields)
    if (f["name"] == "r") {
      saw_r = true;
      EXPECT_EQ(f["type"], "int");
      EXPECT_EQ(f["default"], 8);
      EXPECT_EQ(f["min"], 1);
      EXPECT_EQ(f["peft"], true);
    } else if (f["name"] == "lora_fa") {
      EXPECT_EQ(f["peft"], false);
    }
  EXPECT_TRUE(saw_r);
  ASSERT_EQ(run_cli("methods --methods dora --fields true", &out), 0) << out;
  EXPECT_NE(out.find("--use_dora"), std::string::npos) << out;
  EXPECT_NE(out.find("true "), std::string::npos) << out;  // dora's preset sets use_dora
}
