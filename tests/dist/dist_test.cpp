// Data-parallel training through the CLI on loopback (2 ranks x 1 thread, the bundled
// stories260K + E2E rows): 2 ranks x batch b train the same adapter, with the same loss curve
// and eval loss, as 1 process x batch 2b (also with gradient accumulation and across an uneven
// epoch tail); resume with 2 ranks and with 1; and the faults: a killed rank, a stopped (hung)
// rank, mismatched configs, a wrong WORLD_SIZE, a port in use.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "peft/io.h"
#include "peft/report.h"
#include "test_util.h"

using peft::test::cli_path;
using peft::test::run_cli;
using peft::test::source_path;
using peft::test::temp_dir;
namespace fs = std::filesystem;

namespace {

// 29 training rows: with a global batch of 4, each epoch ends in a batch of 1 (rank 1 gets none).
std::string data_dir() {
  static const std::string dir = [] {
    std::string d = temp_dir("dist_data");
    std::ifstream in(source_path("assets/e2e/train.jsonl"));
    std::ofstream tr(d + "/train.jsonl"), ev(d + "/eval.jsonl");
    std::string line;
    for (int i = 0; i < 29 + 7 && std::getline(in, line); ++i) (i < 29 ? tr : ev) << line << "\n";
    return d;
  }();
  return dir;
}

std::string common(const std::string& extra) {
  return "train --model " + source_path("assets/stories260K") + " --train " + data_dir() + "/train.jsonl --eval " +
         data_dir() + "/eval.jsonl --method lora --r 4 --lora_dropout 0 --learning_rate 2e-3 --max_length 128"
         " --logging_steps 1 --save_steps 0 --progress false --seed 5 " +
         extra;
}

std::vector<std::string> split_words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> w;
  for (std::string x; in >> x;) w.push_back(x);
  return w;
}

// Starts the CLI with extra environment variables, output to `log`.
pid_t spawn(const std::string& args, const std::map<std::string, std::string>& env, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    for (auto& [k, v] : env) setenv(k.c_str(), v.c_str(), 1);
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    auto words = split_words(args);
    std::vector<char*> argv;
    std::string exe = cli_path();
    argv.push_back(exe.data());
    for (auto& w : words) argv.push_back(w.data());
    argv.push_back(nullptr);
    execv(exe.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

// Exit status (as run_cli: the code, or 128 + signal), or -1 after `seconds`.
int wait_for(pid_t pid, double seconds, double* took = nullptr) {
  auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    int st = 0;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      if (took) *took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    if (std::chrono::steady_clock::now() - t0 > std::chrono::duration<double>(seconds)) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::string slurp(const std::string& p) { return fs::exists(p) ? peft::read_file(p) : ""; }

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof a;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

std::map<std::string, std::string> rank_env(int rank, int world, int port) {
  return {{"RANK", std::to_string(rank)},
          {"WORLD_SIZE", std::to_string(world)},
          {"LOCAL_RANK", std::to_string(rank)},
          {"MASTER_ADDR", "127.0.0.1"},
          {"MASTER_PORT", std::to_string(port)}};
}

size_t lines_of(const std::string& path) {
  std::string s = slurp(path);
  return static_cast<size_t>(std::count(s.begin(), s.end(), '\n'));
}

std::vector<double> losses(const std::string& out) {
  std::vector<double> l;
  for (auto& r : peft::read_jsonl(out + "/metrics.jsonl"))
    if (r.contains("loss")) l.push_back(r["loss"].get<double>());
  return l;
}

double final_eval_loss(const std::string& out) {
  double v = -1;
  for (auto& r : peft::read_jsonl(out + "/metrics.jsonl"))
    if (r.contains("eval_loss")) v = r["eval_loss"].get<double>();
  return v;
}

// Largest |a - b| over the adapter tensors of two output folders.
double adapter_diff(const std::string& a, const std::string& b) {
  auto x = peft::load_safetensors(a + "/adapter_model.safetensors");
  auto y = peft::load_safetensors(b + "/adapter_model.safetensors");
  EXPECT_EQ(x.size(), y.size());
  double d = 0;
  for (auto& [k, t] : x) d = std::max(d, (t - y.at(k)).abs().max().item<double>());
  return d;
}

void expect_same_run(const std::string& one, const std::string& two, size_t steps) {
  auto l1 = losses(one), l2 = losses(two);
  ASSERT_EQ(l1.size(), steps);
  ASSERT_EQ(l2.size(), steps);
  for (size_t i = 0; i < steps; ++i) EXPECT_NEAR(l1[i], l2[i], 1e-5) << "step " << i + 1;
  EXPECT_NEAR(final_eval_loss(one), final_eval_loss(two), 1e-5);
  double d = adapter_diff(one, two);
  EXPECT_LE(d, 1e-5);
  // Not trivially equal: the adapter moved away from its initialisation.
  EXPECT_GT(peft::load_safetensors(one + "/adapter_model.safetensors").begin()->second.abs().sum().item<double>(), 0);
}

}  // namespace

// 9 steps of 4 examples over 29 rows: step 8 is the epoch's 1-example tail (rank 1 has nothing),
// step 9 starts epoch 2.
TEST(DistTrain, TwoRanksOfBatchBEqualOneRankOfBatch2B) {
  auto dir = temp_dir("dist_equal");
  std::string log;
  ASSERT_EQ(run_cli(common("--max_steps 9 --per_device_train_batch_size 4 --output-dir " + dir + "/one"), &log), 0) << log;
  ASSERT_EQ(run_cli(common("--max_steps 9 --per_device_train_batch_size 2 --nproc_per_node 2 --output-dir " + dir + "/two"),
                    &log),
            0)
      << log;
  expect_same_run(dir + "/one", dir + "/two", 9);
  // Only rank 0 wrote: one metrics log, no stray files from rank 1.
  EXPECT_TRUE(fs::exists(dir + "/two/report.html"));
}

// Gradient accumulation: 4 steps x 2 micro-batches (micro-batch 8 is the 1-example tail).
TEST(DistTrain, GradientAccumulationReducesOncePerStep) {
  auto dir = temp_dir("dist_accum");
  std::string log;
  const std::string ga = "--max_steps 4 --gradient_accumulation_steps 2 ";
  ASSERT_EQ(run_cli(common(ga + "--per_device_train_batch_size 4 --output-dir " + dir + "/one"), &log), 0) << log;
  ASSERT_EQ(run_cli(common(ga + "--per_device_train_batch_size 2 --nproc_per_node 2 --output-dir " + dir + "/two"), &log), 0)
      << log;
  expect_same_run(dir + "/one", dir + "/two", 4);
}

// Small buckets (LoRA r 4 on stories260K in buckets of <= 4 KiB: several per step), with gradient
// accumulation: the sums started during the last micro-batch's backward (DDP's overlap) give the
// adapter bit for bit that sums after backward give, and the one-process run's within 1e-5.
TEST(DistTrain, BucketSumsStartedDuringBackwardGiveTheSameAdapter) {
  auto dir = temp_dir("dist_overlap");
  std::string log;
  const std::string ga = "--max_steps 4 --gradient_accumulation_steps 2 ";
  const std::string two = ga + "--per_device_train_batch_size 2 --nproc_per_node 2 --ddp_bucket_cap_mb 0.004 ";
  ASSERT_EQ(run_cli(common(ga + "--per_device_train_batch_size 4 --output-dir " + dir + "/one"), &log), 0) << log;
  ASSERT_EQ(run_cli(common(two + "--output-dir " + dir + "/overlap"), &log), 0) << log;
  ASSERT_EQ(run_cli(common(two + "--ddp_overlap false --output-dir " + dir + "/after"), &log), 0) << log;
  expect_same_run(dir + "/one", dir + "/overlap", 4);
  EXPECT_EQ(adapter_diff(dir + "/overlap", dir + "/after"), 0.0);
  EXPECT_EQ(losses(dir + "/overlap"), losses(dir + "/after"));
  // The share of buckets whose sum backward started: all of them here (every LoRA tensor gets a
  // gradient on both ranks), none without overlap.
  auto overlapped = [](const std::string& out) {
    std::vector<double> v;
    for (auto& r : peft::read_jsonl(out + "/metrics.jsonl"))
      if (r.contains("allreduce_overlapped")) v.push_back(r["allreduce_overlapped"].get<double>());
    return v;
  };
  auto on = overlapped(dir + "/overlap"), off = overlapped(dir + "/after");
  ASSERT_EQ(on.size(), 4u);
  ASSERT_EQ(off.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_GT(on[i], 0.0) << "step " << i + 1;
    EXPECT_EQ(off[i], 0.0) << "step " << i + 1;
  }
}

// A 2-rank run cut back to its step-3 checkpoint resumes, with 2 ranks, to the uninterrupted
// adapter bit for bit, and with 1 rank of twice the batch (the same global batch) within 1e-5.
TEST(DistTrain, ResumeWithTwoRanksAndWithOne) {
  auto dir = temp_dir("dist_resume");
  std::string log;
  const std::string run = "--max_steps 6 --save_steps 3 --save_total_limit 0 ";
  ASSERT_EQ(run_cli(common(run + "--per_device_train_batch_size 2 --nproc_per_node 2 --output-dir " + dir + "/full"), &log), 0)
      << log;
  for (const char* name : {"two", "one"}) {
    fs::copy(dir + "/full", dir + "/" + name, fs::copy_options::recursive);
    fs::remove_all(dir + "/" + name + "/checkpoint-6");
    fs::remove(dir + "/" + name + "/adapter_model.safetensors");
  }
  ASSERT_EQ(run_cli(common(run + "--per_device_train_batch_size 2 --nproc_per_node 2 --resume --output-dir " + dir + "/two"),
                    &log),
            0)
      << log;
  EXPECT_NE(log.find("resumed from"), std::string::npos) << log;
  EXPECT_EQ(adapter_diff(dir + "/full", dir + "/two"), 0.0);
  ASSERT_EQ(run_cli(common(run + "--per_device_train_batch_size 4 --resume --output-dir " + dir + "/one"), &log), 0) << log;
  EXPECT_NE(log.find("continues at example 12 of epoch 0"), std::string::npos) << log;
  EXPECT_LE(adapter_diff(dir + "/full", dir + "/one"), 1e-5);
  auto l = losses(dir + "/one"), f = losses(dir + "/full");
  ASSERT_EQ(l.size(), f.size());
  for (size_t i = 0; i < l.size(); ++i) EXPECT_NEAR(l[i], f[i], 1e-5) << i;
}

// SIGKILL one rank of `peft train --nproc_per_node 2` mid-run: rank 0 stops at once with an
// error naming rank 1, and the launcher reports how rank 1 ended.
TEST(DistFaults, KilledRankIsNamedByTheOthers) {
  auto dir = temp_dir("dist_kill");
  pid_t launcher = spawn(common("--max_steps 100000 --per_device_train_batch_size 2 --nproc_per_node 2 --ddp_timeout 60"
                                " --output-dir " + dir + "/out"),
                         {}, dir + "/log");
  // The ranks are the launcher's children (rank 0 started first).
  for (int i = 0; i < 1500 && lines_of(dir + "/out/metrics.jsonl") < 3; ++i) usleep(20000);
  ASSERT_GE(lines_of(dir + "/out/metrics.jsonl"), 3u) << slurp(dir + "/log");
  std::vector<pid_t> kids;
  std::istringstream in(slurp("/proc/" + std::to_string(launcher) + "/task/" + std::to_string(launcher) + "/children"));
  for (pid_t p; in >> p;) kids.push_back(p);
  ASSERT_EQ(kids.size(), 2u);
  std::sort(kids.begin(), kids.end());
  kill(kids[1], SIGKILL);
  double took = 0;
  int rc = wait_for(launcher, 60, &took);
  if (rc == -1) kill(launcher, SIGKILL), kill(kids[0], SIGKILL);
  std::string log = slurp(dir + "/log");
  EXPECT_NE(rc, 0) << log;
  EXPECT_NE(rc, -1) << "hung: " << log;
  EXPECT_LT(took, 30) << log;
  EXPECT_NE(log.find("rank 1 is not responding"), std::string::npos) << log;  // rank 0's own error
  EXPECT_NE(log.find("rank 1 (pid " + std::to_string(kids[1]) + ") was killed by signal 9"), std::string::npos) << log;
}

// A rank that hangs (SIGSTOP: alive, silent) makes the other fail after ddp_timeout.
TEST(DistFaults, HungRankTimesOut) {
  auto dir = temp_dir("dist_hang");
  const int port = free_port();
  const std::string args = common("--max_steps 100000 --per_device_train_batch_size 2 --ddp_timeout 3 --output-dir " + dir + "/out");
  pid_t r0 = spawn(args, rank_env(0, 2, port), dir + "/log0");
  pid_t r1 = spawn(args, rank_env(1, 2, port), dir + "/log1");
  for (int i = 0; i < 1500 && lines_of(dir + "/out/metrics.jsonl") < 3; ++i) usleep(20000);
  ASSERT_GE(lines_of(dir + "/out/metrics.jsonl"), 3u) << slurp(dir + "/log0");
  kill(r1, SIGSTOP);
  double took = 0;
  int rc = wait_for(r0, 30, &took);
  kill(r1, SIGKILL);
  wait_for(r1, 10);
  if (rc == -1) kill(r0, SIGKILL), wait_for(r0, 10);
  std::string log = slurp(dir + "/log0");
  EXPECT_NE(rc, 0) << log;
  EXPECT_NE(rc, -1) << "hung: " << log;
  EXPECT_GE(took, 2.5) << log;  // the timeout, not an instant failure
  EXPECT_LT(took, 15) << log;
  EXPECT_NE(log.find("rank 1 is not responding"), std::string::npos) << log;
}

TEST(DistFaults, MismatchedConfigIsAnErrorOnEveryRank) {
  auto dir = temp_dir("dist_mismatch");
  const int port = free_port();
  pid_t r0 = spawn(common("--max_steps 3 --output-dir " + dir + "/out"), rank_env(0, 2, port), dir + "/log0");
  pid_t r1 = spawn(common("--max_steps 3 --learning_rate 1e-3 --output-dir " + dir + "/out"), rank_env(1, 2, port),
                   dir + "/log1");
  int rc0 = wait_for(r0, 60), rc1 = wait_for(r1, 60);
  for (auto [rc, log] : {std::pair{rc0, slurp(dir + "/log0")}, std::pair{rc1, slurp(dir + "/log1")}}) {
    EXPECT_NE(rc, 0) << log;
    EXPECT_NE(log.find("rank 1 has a different configuration than rank 0"), std::string::npos) << log;
    EXPECT_NE(log.find("recipe.learning_rate"), std::string::npos) << log;
  }
  EXPECT_FALSE(fs::exists(dir + "/out/adapter_model.safetensors"));
}

TEST(DistFaults, WrongWorldSizeIsAnError) {
  auto dir = temp_dir("dist_world");
  const int port = free_port();
  const std::string args = common("--max_steps 3 --output-dir " + dir + "/out");
  pid_t r0 = spawn(args, rank_env(0, 2, port), dir + "/log0");
  pid_t r1 = spawn(args, rank_env(1, 3, port), dir + "/log1");
  int rc0 = wait_for(r0, 60), rc1 = wait_for(r1, 60);
  for (auto [rc, log] : {std::pair{rc0, slurp(dir + "/log0")}, std::pair{rc1, slurp(dir + "/log1")}}) {
    EXPECT_NE(rc, 0) << log;
    EXPECT_NE(log.find("rank 1 was started with WORLD_SIZE=3 but rank 0 with WORLD_SIZE=2"), std::string::npos) << log;
  }
}

TEST(DistFaults, PortInUseIsAnError) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof a;
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  auto dir = temp_dir("dist_port");
  pid_t r0 = spawn(common("--max_steps 3 --output-dir " + dir + "/out"), rank_env(0, 2, port), dir + "/log0");
  int rc = wait_for(r0, 60);
  close(fd);
  std::string log = slurp(dir + "/log0");
  EXPECT_NE(rc, 0) << log;
  EXPECT_NE(log.find("port " + std::to_string(port) + " is already in use"), std::string::npos) << log;
}

TEST(DistEnv, PartialEnvironmentIsAnError) {
  auto dir = temp_dir("dist_env");
  pid_t p = spawn(common("--max_steps 1 --output-dir " + dir + "/out"), {{"RANK", "0"}}, dir + "/log");
  int rc = wait_for(p, 60);
  std::string log = slurp(dir + "/log");
  EXPECT_NE(rc, 0) << log;
  EXPECT_NE(log.find("RANK is set but WORLD_SIZE is not"), std::string::npos) << log;
}

// A rank that fails on its own (here rank 0: --resume without a checkpoint) closes its
// connections and leaves its message in the store: the other rank stops at once and quotes it.
TEST(DistFaults, ErrorOnOneRankIsQuotedByTheOthers) {
  auto dir = temp_dir("dist_one_fails");
  const int port = free_port();
  const std::string args = common("--max_steps 3 --resume --output-dir " + dir + "/out");
  pid_t r0 = spawn(args, rank_env(0, 2, port), dir + "/log0");
  pid_t r1 = spawn(args, rank_env(1, 2, port), dir + "/log1");
  double took = 0;
  int rc1 = wait_for(r1, 60, &took), rc0 = wait_for(r0, 60);
  std::string log1 = slurp(dir + "/log1");
  EXPECT_NE(rc0, 0) << slurp(dir + "/log0");
  EXPECT_NE(rc1, 0) << log1;
  EXPECT_NE(log1.find("rank 0 failed: rank 0: --resume: no checkpoint"), std::string::npos) << log1;
  EXPECT_LT(took, 30) << log1;
}

// torchrun (Debian's python3-torch, when installed) starts the same 2 ranks: the same adapter,
// bit for bit, as `peft train --nproc_per_node 2`. torchrun's agent hosts the store
// (TORCHELASTIC_USE_AGENT_STORE=True): every rank, rank 0 included, is a client.
TEST(DistTrain, TorchrunGivesTheLauncherAdapter) {
  if (system("command -v torchrun >/dev/null 2>&1") != 0) GTEST_SKIP() << "torchrun not installed (python3-torch)";
  auto dir = temp_dir("dist_torchrun");
  std::string log;
  const std::string run = "--max_steps 3 --per_device_train_batch_size 2 ";
  ASSERT_EQ(run_cli(common(run + "--nproc_per_node 2 --output-dir " + dir + "/launcher"), &log), 0) << log;
  // --redirects/--tee 2: Debian's torchrun 1.13 on Python 3.11 fails on their default "0";
  // "--" keeps torchrun's parser off peft's options (--r would be an ambiguous abbreviation).
  std::string cmd = "torchrun --nproc_per_node 2 --master_port " + std::to_string(free_port()) +
                    " --redirects 2 --tee 2 --no_python -- " + cli_path() + " " +
                    common(run + "--output-dir " + dir + "/torchrun") + " > " + dir + "/log 2>&1";
  ASSERT_EQ(system(cmd.c_str()), 0) << slurp(dir + "/log");
  EXPECT_EQ(peft::read_file(dir + "/launcher/adapter_model.safetensors"),
            peft::read_file(dir + "/torchrun/adapter_model.safetensors"));
}
