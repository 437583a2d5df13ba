// The training loop: schedules in closed form, loss goes down, resume after SIGKILL equals an
// uninterrupted run bit for bit, NaN loss stops cleanly, every method trains through the loop.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "peft/data.h"
#include "peft/io.h"
#include "peft/report.h"
#include "peft/tokenizer.h"
#include "peft/trainer.h"
#include "test_util.h"

using namespace peft;
using peft::test::run_cli;
using peft::test::source_path;
using peft::test::temp_dir;

TEST(Schedule, ClosedForms) {
  // linear with warmup 10 of 110: ramps 0 -> 1, then falls linearly to 0.
  EXPECT_DOUBLE_EQ(lr_lambda("linear", 0, 10, 110), 0.0);
  EXPECT_DOUBLE_EQ(lr_lambda("linear", 5, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_lambda("linear", 10, 10, 110), 1.0);
  EXPECT_DOUBLE_EQ(lr_lambda("linear", 60, 10, 110), 0.5);
  EXPECT_DOUBLE_EQ(lr_lambda("linear", 110, 10, 110), 0.0);
  // cosine: 0.5 (1 + cos(pi * progress)); progress 1/2 -> 0.5, 1/4 -> (1 + 1/sqrt 2) / 2.
  EXPECT_NEAR(lr_lambda("cosine", 60, 10, 110), 0.5, 1e-12);
  EXPECT_NEAR(lr_lambda("cosine", 35, 10, 110), 0.5 * (1 + std::sqrt(0.5)), 1e-12);
  EXPECT_DOUBLE_EQ(lr_lambda("constant", 0, 10, 110), 1.0);
  EXPECT_DOUBLE_EQ(lr_lambda("constant_with_warmup", 5, 10, 110), 0.5);
}

namespace {

std::string write_data(const std::string& dir, int n) {
  std::string path = dir + "/train.jsonl";
  std::ofstream f(path);
  const char* names[] = {"Lily", "Tom", "Sue", "Max", "Ben"};
  const char* things[] = {"a red ball", "a big dog", "a small cat", "a blue kite"};
  for (int i = 0; i < n; ++i)
    f << nlohmann::json{{"prompt", std::string("Who had ") + things[i % 4] + "?\n"},
                        {"completion", std::string(names[i % 5]) + " had " + things[i % 4] + "."}}
                .dump()
      << "\n";
  return path;
}

struct Setup {
  PeftModelPtr pm;
  DataSplits data;
  std::shared_ptr<Tokenizer> tok;
};

Setup setup(const std::string& dir, const std::string& method, nlohmann::json opts) {
  Setup s;
  torch::manual_seed(0);
  s.tok = std::shared_ptr<Tokenizer>(load_tokenizer(source_path("assets/stories260K")).release());
  DataConfig dc;
  dc.train_file = write_data(dir, 40);
  dc.eval_fraction = 0.2;
  dc.tokenize.max_length = 48;
  s.data = load_data(dc, *s.tok);
  s.pm = std::make_shared<PeftModel>(load_model(source_path("assets/stories260K")));
  s.pm->add_adapter("default", method_config(method, opts));
  return s;
}

TrainingArguments args_for(const std::string& out, int64_t steps) {
  TrainingArguments a;
  a.output_dir = out;
  a.max_steps = steps;
  a.learning_rate = 5e-3;
  a.per_device_train_batch_size = 4;
  a.eval_steps = 5;
  a.save_steps = 5;
  a.logging_steps = 1;
  a.progress = false;
  a.seed = 7;
  return a;
}

}  // namespace

TEST(Trainer, LossDecreasesAndWritesEverything) {
  auto dir = temp_dir("trainer_basic");
  auto s = setup(dir, "lora", {{"r", 4}, {"target_modules", {"q_proj", "v_proj", "o_proj", "down_proj"}}});
  Trainer t(s.pm, args_for(dir + "/out", 20), s.data.train, &s.data.eval);
  auto before = t.evaluate()["eval_loss"].get<double>();
  auto r = t.train();
  EXPECT_EQ(r.steps, 20);
  EXPECT_LT(r.final_eval["eval_loss"].get<double>(), before - 0.05);
  for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "report.svg", "report.html",
                        "run_config.json", "checkpoint-20/optimizer.pt", "checkpoint-20/trainer_state.json"})
    EXPECT_TRUE(std::filesystem::exists(dir + "/out/" + f)) << f;
  // save_total_limit 2 (+ best): old checkpoints are gone.
  EXPECT_FALSE(std::filesystem::exists(dir + "/out/checkpoint-5") &&
               std::filesystem::exists(dir + "/out/checkpoint-10") && std::filesystem::exists(dir + "/out/checkpoint-15"));
  auto log = read_jsonl(dir + "/out/metrics.jsonl");
  EXPECT_GE(log.size(), 20u);
}

TEST(Trainer, ResumeEqualsUninterruptedRun) {
  auto dir = temp_dir("trainer_resume");
  // Uninterrupted: 20 steps.
  auto a = setup(dir, "lora", {{"r", 4}, {"lora_dropout", 0.1}});
  Trainer(a.pm, args_for(dir + "/full", 20), a.data.train, &a.data.eval).train();
  // Interrupted: the same run, with everything after the step-10 checkpoint thrown away (as if
  // it had died there), then resumed by a fresh process state.
  auto b = setup(dir, "lora", {{"r", 4}, {"lora_dropout", 0.1}});
  auto args = args_for(dir + "/part", 20);
  args.save_total_limit = 0;  // keep every checkpoint
  Trainer(b.pm, args, b.data.train, &b.data.eval).train();
  for (const char* f : {"checkpoint-15", "checkpoint-20", "adapter_model.safetensors"})
    std::filesystem::remove_all(dir + "/part/" + f);
  torch::manual_seed(12345);  // the resumed run must not depend on the RNG state it starts with
  auto c = setup(dir, "lora", {{"r", 4}, {"lora_dropout", 0.1}});
  Trainer(c.pm, args, c.data.train, &c.data.eval).train(/*resume=*/true);
  auto full = load_safetensors(dir + "/full/adapter_model.safetensors");
  auto part = load_safetensors(dir + "/part/adapter_model.safetensors");
  ASSERT_EQ(full.size(), part.size());
  for (auto& kv : full) EXPECT_TRUE(torch::equal(kv.second, part.at(kv.first))) << kv.first;
}

// Sparse methods whose mask is chosen from data (FISH, before step 1) or by training (LT-SFT,
// after phase 1): the checkpoint carries the mask, so a resumed run equals an uninterrupted one.
class SparseResume : public ::testing::TestWithParam<std::string> {};
TEST_P(SparseResume, EqualsUninterruptedRun) {
  auto dir = temp_dir("trainer_resume_" + GetParam());
  nlohmann::json opts = GetParam() == "fish-mask" ? nlohmann::json{{"density", 0.05}, {"fisher_batches", 2}}
                                                   : nlohmann::json{{"density", 0.05}, {"phase1_steps", 3}};
  auto a = setup(dir, GetParam(), opts);
  Trainer(a.pm, args_for(dir + "/full", 10), a.data.train, &a.data.eval).train();
  auto b = setup(dir, GetParam(), opts);
  auto args = args_for(dir + "/part", 10);
  args.save_total_limit = 0;
  Trainer(b.pm, args, b.data.train, &b.data.eval).train();
  for (const char* f : {"checkpoint-10", "adapter_model.safetensors"}) std::filesystem::remove_all(dir + "/part/" + f);
  auto c = setup(dir, GetParam(), opts);
  Trainer(c.pm, args, c.data.train, &c.data.eval).train(/*resume=*/true);
  auto full = load_safetensors(dir + "/full/adapter_model.safetensors");
  auto part = load_safetensors(dir + "/part/adapter_model.safetensors");
  ASSERT_EQ(full.size(), part.size());
  for (auto& kv : full) {
    EXPECT_NE(kv.first.find("sparse_"), std::string::npos) << kv.first << ": saved dense";
    EXPECT_TRUE(torch::equal(kv.second, part.at(kv.first))) << kv.first;
  }
}
INSTANTIATE_TEST_SUITE_P(All, SparseResume, ::testing::Values("fish-mask", "lt-sft"), [](const auto& info) {
  std::string n = info.param;
  std::replace(n.begin(), n.end(), '-', '_');
  return n;
});

// LT-SFT restarts phase 2 with a fresh optimizer (Ansell et al. 2022, sec. 3.1): phase 2's first
// AdamW step from D = 0 moves each kept entry by lr * g / (|g| + eps) (bias-corrected first
// moments m = g, v = g^2), i.e. by lr up to eps / |g|. Moments carried over from phase 1 give
// other magnitudes.
TEST(Trainer, LtSftPhaseTwoStartsWithAFreshOptimizer) {
  auto dir = temp_dir("trainer_lt_sft_fresh");
  auto s = setup(dir, "lt-sft", {{"density", 0.05}, {"phase1_steps", 2}});
  auto args = args_for(dir + "/out", 3);  // steps 1-2 dense, step 3 the first sparse one
  args.lr_scheduler_type = "constant";
  args.max_grad_norm = 0;
  args.eval_steps = 0;
  args.save_steps = 0;
  Trainer(s.pm, args, s.data.train, &s.data.eval).train();
  auto saved = load_safetensors(dir + "/out/adapter_model.safetensors");
  int64_t n = 0, at_lr = 0;
  for (auto& [k, v] : saved) {
    if (k.find("sparse_values") == std::string::npos) continue;
    auto a = v.abs().to(torch::kFloat64);
    n += a.numel();
    EXPECT_LE(a.max().item<double>(), args.learning_rate * (1 + 1e-6)) << k;
    at_lr += (a > args.learning_rate * (1 - 1e-3)).sum().item<int64_t>();
  }
  ASSERT_GT(n, 0) << "no sparse delta saved";
  EXPECT_GE(at_lr, n * 95 / 100) << at_lr << " of " << n << " kept entries moved by lr";
}

// Each LT-SFT phase is a run of its own with its own schedule (linear, warmup_ratio 0.5): phase 1
// = steps 0-1 (warmup 1), phase 2 = steps 2-5 (warmup 2); LoRA keeps one schedule over 0-5
// (warmup 3). lr(s) = lr * (s / w) during warmup, then lr * (len - s) / (len - w).
TEST(Trainer, LtSftPhasesHaveTheirOwnLearningRateSchedule) {
  for (std::string method : {"lt-sft", "lora"}) {
    auto dir = temp_dir("trainer_lt_sft_schedule_" + method);
    auto s = setup(dir, method, method == "lora" ? nlohmann::json{{"r", 2}} : nlohmann::json{{"phase1_steps", 2}});
    auto args = args_for(dir + "/out", 6);
    args.lr_scheduler_type = "linear";
    args.warmup_ratio = 0.5;
    args.eval_steps = 0;
    args.save_steps = 0;
    Trainer(s.pm, args, s.data.train, &s.data.eval).train();
    std::vector<double> got;
    for (auto& r : read_jsonl(dir + "/out/metrics.jsonl"))
      if (r.contains("lr")) got.push_back(r["lr"].get<double>() / args.learning_rate);
    std::vector<double> want = method == "lt-sft" ? std::vector<double>{0, 1, 0, 0.5, 1, 0.5}
                                                  : std::vector<double>{0, 1.0 / 3, 2.0 / 3, 1, 2.0 / 3, 1.0 / 3};
    ASSERT_EQ(got.size(), want.size()) << method;
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-12) << method << " step " << i;
  }
}

// The CLI run killed with SIGKILL mid-way and resumed gives the uninterrupted adapter.
TEST(Trainer, SigkillThenResumeIsBitExact) {
  auto dir = temp_dir("trainer_kill");
  auto data = write_data(dir, 60);
  std::string common = "train --model " + source_path("assets/stories260K") + " --train " + data +
                       " --method lora --r 4 --lora_dropout 0.1 --max_steps 40 --save_steps 4 --logging_steps 1"
                       " --per_device_train_batch_size 4 --learning_rate 0.005 --max_length 48 --progress false";
  ASSERT_EQ(run_cli(common + " --output-dir " + dir + "/full"), 0);
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);  // its own process group, so the kill reaches the shell and peft
    std::string cmd = peft::test::cli_path() + " " + common + " --output-dir " + dir + "/killed >/dev/null 2>&1";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
    _exit(127);
  }
  // Kill once a few checkpoints exist (polling, not sleeping a fixed time).
  for (int i = 0; i < 600; ++i) {
    if (std::filesystem::exists(dir + "/killed/checkpoint-12")) break;
    usleep(20000);
  }
  kill(-pid, SIGKILL);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_FALSE(std::filesystem::exists(dir + "/killed/adapter_model.safetensors")) << "run finished before the kill";
  std::string out;
  ASSERT_EQ(run_cli(common + " --output-dir " + dir + "/killed --resume", &out), 0) << out;
  auto full = load_safetensors(dir + "/full/adapter_model.safetensors");
  auto resumed = load_safetensors(dir + "/killed/adapter_model.safetensors");
  for (auto& kv : full) EXPECT_TRUE(torch::equal(kv.second, resumed.at(kv.first))) << kv.first;
}

TEST(Trainer, NanLossStopsAndKeepsCheckpoint) {
  auto dir = temp_dir("trainer_nan");
  auto s = setup(dir, "lora", {{"r", 4}});
  Trainer(s.pm, args_for(dir + "/out", 5), s.data.train, &s.data.eval).train();
  auto before = read_file(dir + "/out/checkpoint-5/adapter_model.safetensors");
  {
    torch::NoGradGuard ng;
    for (auto& p : s.pm->trainable_parameters()) p.fill_(std::nan(""));
  }
  auto args = args_for(dir + "/out", 10);
  try {
    Trainer(s.pm, args, s.data.train, &s.data.eval).train(/*resume=*/false);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NaN"), std::string::npos) << e.what();
  }
  EXPECT_EQ(read_file(dir + "/out/checkpoint-5/adapter_model.safetensors"), before);
}

// Every registered method trains through the same loop and lowers the training loss.
class EveryMethod : public ::testing::TestWithParam<std::string> {};
TEST_P(EveryMethod, Trains) {
  auto dir = temp_dir("trainer_" + GetParam());
  nlohmann::json opts = nlohmann::json::object();
  if (GetParam() == "adalora") opts = {{"init_r", 4}, {"target_r", 2}, {"total_step", 15}, {"tinit", 2}, {"tfinal", 3}};
  else if ((GetParam().find("tuning") != std::string::npos && GetParam() != "ln-tuning" && GetParam().rfind("child", 0) != 0) ||
           GetParam() == "mam") opts = {{"num_virtual_tokens", 4}};
  else if (GetParam() == "bitfit") opts = {{"add_missing_biases", true}};  // stories260K has no biases
  else if (GetParam() == "sparse-delta" || GetParam() == "diff-pruning") opts = {{"density", 0.05}};
  else if (GetParam() == "fish-mask") opts = {{"density", 0.05}, {"fisher_batches", 2}};
  else if (GetParam() == "child-tuning-d") opts = {{"reserve_p", 0.05}, {"fisher_batches", 2}};
  else if (GetParam() == "child-tuning-f") opts = {{"reserve_p", 0.3}};
  else if (GetParam() == "lt-sft") opts = {{"density", 0.05}, {"phase1_steps", 5}};
  else if (GetParam() == "ln-tuning" || GetParam() == "layer-freeze" || GetParam() == "houlsby" ||
           GetParam() == "pfeiffer" || GetParam() == "parallel-adapter" || GetParam() == "hadamard" ||
           GetParam() == "lst" || GetParam() == "s4" || GetParam() == "unipelt" || GetParam() == "adamix")
    opts = nlohmann::json::object();
  else if (GetParam().rfind("compacter", 0) == 0) opts = {{"reduction_factor", 8}};  // hidden 64: k = 8
  else if (GetParam() != "ia3") opts = {{"r", 4}};
  auto s = setup(dir, GetParam(), opts);
  auto args = args_for(dir + "/out", 15);
  args.eval_steps = 0;
  args.save_steps = 0;
  Trainer t(s.pm, args, s.data.train, &s.data.eval);
  double before = t.evaluate()["eval_loss"].get<double>();
  auto r = t.train();
  EXPECT_LT(r.final_eval["eval_loss"].get<double>(), before) << GetParam();
}
INSTANTIATE_TEST_SUITE_P(All, EveryMethod,
                         ::testing::Values("lora", "rslora", "dora", "pissa", "olora", "lora-fa", "dylora", "delta-lora",
                                           "vera", "loha", "lokr", "adalora", "ia3", "prompt-tuning", "p-tuning",
                                           "prefix-tuning", "p-tuning-v2", "houlsby", "pfeiffer", "parallel-adapter",
                                           "bitfit", "ln-tuning", "layer-freeze", "sparse-delta", "fish-mask",
                                           "child-tuning-d", "child-tuning-f", "diff-pruning", "lt-sft", "mam",
                                           "compacter", "compacter++", "hadamard", "lst", "s4", "unipelt", "propetl",
                                           "adamix"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           std::replace(n.begin(), n.end(), '+', 'p');
                           return n;
                         });
