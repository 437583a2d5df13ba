// MAD-X (Pfeiffer et al. 2020) on the bundled stories260K: language adapters trained on plain
// English and Romanian text (Tatoeba En-Ro; causal LM here, the paper's MLM on encoders), a task
// adapter trained on E2E stacked on the frozen English one (--stack_adapters), then the language
// adapter swapped at inference (--adapter ro=... --adapter task=...: Stack(ro, task)).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "cli/method_runs.h"
#include "peft/io.h"
#include "test_util.h"

namespace peft::test {
namespace {

/// {"text": field} lines from the first n rows of a source/target JSONL file.
std::string text_file(const std::string& from, const std::string& field, int n, const std::string& to) {
  std::ifstream in(from);
  std::ofstream out(to);
  std::string line;
  for (int i = 0; i < n && std::getline(in, line); ++i)
    out << nlohmann::json{{"text", nlohmann::json::parse(line).at(field)}}.dump() << "\n";
  return to;
}

std::string bytes_of(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

/// `peft train` on stories260K with `data`, into `out`, with the options `flags`; the log on failure.
void train_stories(const std::string& data, const std::string& out, const std::string& flags) {
  std::string log;
  EXPECT_EQ(run_cli("train --model " + source_path("assets/stories260K") + " --train " + data + " --output-dir " + out + flags,
                    &log),
            0)
      << log;
}

double eval_loss(const std::string& adapters, const std::string& data) {
  std::string out;
  EXPECT_EQ(run_cli("eval --model " + source_path("assets/stories260K") + adapters + " --data " + data +
                        " --metrics loss --max_length 128",
                    &out),
            0)
      << out;
  auto brace = out.rfind("{\"");
  if (brace == std::string::npos) return -1;
  auto j = nlohmann::json::parse(out.substr(brace, out.find('\n', brace) - brace));
  return j.at("loss").get<double>();
}

// The language adapters are plain Pfeiffer adapters, or with MAD-X's invertible adapter on the
// embeddings (pfeiffer-inv: it swaps with its language; the task adapter is plain Pfeiffer).
class MadX : public ::testing::TestWithParam<std::string> {};

TEST_P(MadX, StackedTaskAdapterOverSwappableLanguageAdapters) {
  const std::string lang_method = GetParam();
  auto dir = temp_dir("madx_" + lang_method);
  const std::string tatoeba = source_path("assets/mt/tatoeba-en-ro/train.jsonl");
  auto en = text_file(tatoeba, "source", 400, dir + "/en.jsonl");
  auto ro = text_file(tatoeba, "target", 400, dir + "/ro.jsonl");
  auto ro_eval = dir + "/ro_eval.jsonl";
  {
    std::ifstream in(tatoeba);
    std::ofstream out(ro_eval);
    std::string line;
    for (int i = 0; std::getline(in, line); ++i)
      if (i >= 1900) out << nlohmann::json{{"text", nlohmann::json::parse(line).at("target")}}.dump() << "\n";
  }
  auto task = head_lines(source_path("assets/e2e/train.jsonl"), dir + "/task.jsonl", 200);
  auto task_eval = head_lines(source_path("assets/e2e/validation.jsonl"), dir + "/task_eval.jsonl", 40);
  const std::string common = " --max_steps 30 --learning_rate 5e-3 --per_device_train_batch_size 8"
                             " --max_length 128 --save_steps 0 --logging_steps 10 --progress false --seed 5";
  auto train = [&](const std::string& data, const std::string& out, const std::string& extra) {
    train_stories(data, out, common + extra);
  };
  train(en, dir + "/lang_en", " --method " + lang_method);
  train(ro, dir + "/lang_ro", " --method " + lang_method);
  const std::string en_weights = bytes_of(dir + "/lang_en/adapter_model.safetensors");
  train(task, dir + "/task", " --method pfeiffer --stack_adapters en=" + dir + "/lang_en");
  // The language adapter stayed frozen (its file is untouched, the task folder holds only the task
  // adapter: the keys of a plain Pfeiffer adapter, the language adapter's without its invertible part).
  EXPECT_EQ(bytes_of(dir + "/lang_en/adapter_model.safetensors"), en_weights);
  auto task_keys = load_safetensors(dir + "/task/adapter_model.safetensors");
  auto lang_keys = load_safetensors(dir + "/lang_en/adapter_model.safetensors");
  size_t invertible = 0;
  for (auto& [k, t] : lang_keys) {
    if (k.rfind("invertible_adapter.", 0) == 0) {
      ++invertible;
      continue;
    }
    ASSERT_TRUE(task_keys.count(k)) << k;
    EXPECT_FALSE(torch::equal(task_keys.at(k), t)) << k << " was copied, not trained";
  }
  EXPECT_EQ(task_keys.size() + invertible, lang_keys.size());
  EXPECT_EQ(invertible, lang_method == "pfeiffer-inv" ? 8u : 0u);  // {F, G} x {0, 2} x {weight, bias}
  EXPECT_EQ(read_json(dir + "/task/run_config.json").value("stack_adapters", std::string()), "en=" + dir + "/lang_en");

  const std::string base = "", stack_en = " --adapter en=" + dir + "/lang_en --adapter task=" + dir + "/task",
                    stack_ro = " --adapter ro=" + dir + "/lang_ro --adapter task=" + dir + "/task",
                    task_only = " --adapter task=" + dir + "/task";
  // The task adapter works in the stack it was trained in.
  const double l_base = eval_loss(base, task_eval), l_stack = eval_loss(stack_en, task_eval),
               l_alone = eval_loss(task_only, task_eval);
  EXPECT_LT(l_stack, l_base);
  EXPECT_LT(l_stack, l_alone) << "the task adapter was trained over the English adapter";
  // Swapping in the Romanian language adapter: Romanian text is modelled better than under the
  // English one (the cross-lingual transfer step of MAD-X).
  const double ro_under_ro = eval_loss(stack_ro, ro_eval), ro_under_en = eval_loss(stack_en, ro_eval);
  EXPECT_LT(ro_under_ro, ro_under_en);
}

INSTANTIATE_TEST_SUITE_P(LanguageAdapters, MadX, ::testing::Values("pfeiffer", "pfeiffer-inv"),
                         [](const auto& info) { return info.param == "pfeiffer" ? std::string("plain") : std::string("invertible"); });

// AdapterFusion through the CLI: two task adapters, then `--method adapter_fusion
// --stack_adapters a=DIR,b=DIR` trains only the fusion (Q, K, V per slot) over them, frozen; its
// validation loss goes down, and eval with the three adapters loaded beats the untrained fusion.
TEST(AdapterFusionCli, TrainsOnlyTheFusionOverFrozenAdapters) {
  auto dir = temp_dir("fusion_cli");
  auto task_a = head_lines(source_path("assets/e2e/train.jsonl"), dir + "/a.jsonl", 100);
  auto task_eval = head_lines(source_path("assets/e2e/validation.jsonl"), dir + "/eval.jsonl", 24);
  const std::string tatoeba = source_path("assets/mt/tatoeba-en-ro/train.jsonl");
  auto task_b = text_file(tatoeba, "source", 100, dir + "/b.jsonl");
  const std::string run = " --max_steps 20 --learning_rate 5e-3 --per_device_train_batch_size 8 --max_length 128"
                          " --save_steps 0 --logging_steps 10 --progress false --seed 5 --method ";
  train_stories(task_a, dir + "/a", run + "pfeiffer");
  train_stories(task_b, dir + "/b", run + "pfeiffer");
  const std::string a_bytes = bytes_of(dir + "/a/adapter_model.safetensors");
  train_stories(task_a, dir + "/fusion",
                run + "adapter_fusion --eval " + task_eval + " --eval_on_start true --eval_steps 20 --stack_adapters a=" +
                    dir + "/a,b=" + dir + "/b");
  EXPECT_EQ(bytes_of(dir + "/a/adapter_model.safetensors"), a_bytes);
  auto keys = load_safetensors(dir + "/fusion/adapter_model.safetensors");
  ASSERT_FALSE(keys.empty());
  for (auto& [k, t] : keys) EXPECT_NE(k.find(".fusion_"), std::string::npos) << k << " saved with the fusion";
  EXPECT_EQ(read_json(dir + "/fusion/adapter_config.json").at("adapters"), nlohmann::json({"a", "b"}));
  std::vector<double> evals;
  std::ifstream m(dir + "/fusion/metrics.jsonl");
  for (std::string line; std::getline(m, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("eval_loss")) evals.push_back(j["eval_loss"].get<double>());
  }
  ASSERT_GE(evals.size(), 2u);
  EXPECT_LT(evals.back(), evals.front());
  const double again = eval_loss(" --adapter a=" + dir + "/a --adapter b=" + dir + "/b --adapter fusion=" + dir + "/fusion",
                                 task_eval);
  EXPECT_LT(again, evals.front()) << "the trained fusion, loaded over its adapters";
}

}  // namespace
}  // namespace peft::test
