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

double eval_loss(const std::string& adapters, const std::string& data) {
  std::string out;
  EXPECT_EQ(run_cli("eval --model " + source_path("assets/stories260K") + adapters + " --data " + data +
                        " --metrics loss --max_length 64",
                    &out),
            0)
      << out;
  auto brace = out.rfind("{\"");
  if (brace == std::string::npos) return -1;
  auto j = nlohmann::json::parse(out.substr(brace, out.find('\n', brace) - brace));
  return j.at("loss").get<double>();
}

TEST(MadX, StackedTaskAdapterOverSwappableLanguageAdapters) {
  auto dir = temp_dir("madx");
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
  const std::string common = " --method pfeiffer --max_steps 30 --learning_rate 5e-3 --per_device_train_batch_size 8"
                             " --max_length 64 --save_steps 0 --logging_steps 10 --progress false --seed 5";
  auto train = [&](const std::string& data, const std::string& out, const std::string& extra) {
    std::string log;
    ASSERT_EQ(run_cli("train --model " + source_path("assets/stories260K") + " --train " + data + " --output-dir " + out +
                          common + extra,
                      &log),
              0)
        << log;
  };
  train(en, dir + "/lang_en", "");
  train(ro, dir + "/lang_ro", "");
  const std::string en_weights = bytes_of(dir + "/lang_en/adapter_model.safetensors");
  train(task, dir + "/task", " --stack_adapters en=" + dir + "/lang_en");
  // The language adapter stayed frozen (its file is untouched, the task folder holds only the task
  // adapter: the same keys as a plain Pfeiffer adapter).
  EXPECT_EQ(bytes_of(dir + "/lang_en/adapter_model.safetensors"), en_weights);
  auto task_keys = load_safetensors(dir + "/task/adapter_model.safetensors");
  auto lang_keys = load_safetensors(dir + "/lang_en/adapter_model.safetensors");
  ASSERT_EQ(task_keys.size(), lang_keys.size());
  for (auto& [k, t] : lang_keys) {
    ASSERT_TRUE(task_keys.count(k)) << k;
    EXPECT_FALSE(torch::equal(task_keys.at(k), t)) << k << " was copied, not trained";
  }
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

}  // namespace
}  // namespace peft::test
