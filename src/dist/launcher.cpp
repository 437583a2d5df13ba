// launch_local: `peft train --nproc_per_node N` — torchrun's single-node job in a few lines:
// N copies of this program with the rank environment, signals forwarded, the first failure
// reported (by rank, exit code or signal), stragglers terminated after a grace period.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "peft/dist.h"
#include "peft/error.h"
#include "peft/log.h"

namespace peft::dist {
namespace {

volatile sig_atomic_t g_signal = 0;
void on_signal(int s) { g_signal = s; }

// A port the kernel considers free right now (bind to port 0). The store binds it moments
// later; if another program takes it in between, rank 0 fails with "port ... already in use".
int64_t free_port(const std::string& addr) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  PEFT_CHECK(fd >= 0, "peft train --nproc_per_node: socket(): ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = 0;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  (void)addr;
  socklen_t len = sizeof a;
  bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
            getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  int err = errno;
  close(fd);
  PEFT_CHECK(ok, "peft train --nproc_per_node: cannot find a free port: ", std::strerror(err));
  return ntohs(a.sin_port);
}

std::string describe(int status) {
  if (WIFSIGNALED(status)) {
    const char* n = strsignal(WTERMSIG(status));
    return str_cat("was killed by signal ", WTERMSIG(status), " (", n ? n : "?", ")");
  }
  return str_cat("exited with status ", WEXITSTATUS(status));
}

}  // namespace

int launch_local(const std::vector<std::string>& argv, const LaunchOptions& opt) {
  PEFT_CHECK(opt.nproc >= 1, "launcher: --nproc_per_node must be >= 1, got ", opt.nproc);
  PEFT_CHECK(!std::getenv("RANK"), "launcher: --nproc_per_node inside a process that already has RANK set "
                                   "(started by torchrun?): use one launcher, not both");
  const int64_t port = opt.master_port > 0 ? opt.master_port : free_port(opt.master_addr);
  if (!std::getenv("OMP_NUM_THREADS")) {
    // As torchrun: the ranks share the cores instead of each taking all of them.
    unsigned hw = std::thread::hardware_concurrency();
    int64_t per = std::max<int64_t>(1, static_cast<int64_t>(hw ? hw : 1) / opt.nproc);
    setenv("OMP_NUM_THREADS", std::to_string(per).c_str(), 1);
    log_info("launcher: OMP_NUM_THREADS=", per, " per rank (", opt.nproc, " ranks)");
  }
  log_info("launcher: ", opt.nproc, " ranks, store at ", opt.master_addr, ":", port);

  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int{}, old_term{}, old_hup{};
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGHUP, &sa, &old_hup);

  std::vector<pid_t> pids;
  for (int64_t r = 0; r < opt.nproc; ++r) {
    pid_t pid = fork();
    PEFT_CHECK(pid >= 0, "launcher: fork(): ", std::strerror(errno));
    if (pid == 0) {
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      signal(SIGHUP, SIG_DFL);
      setenv("RANK", std::to_string(r).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(opt.nproc).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(opt.nproc).c_str(), 1);
      setenv("MASTER_ADDR", opt.master_addr.c_str(), 1);
      setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      std::vector<char*> args;
      static std::string self = "peft";
      args.push_back(self.data());
      for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv("/proc/self/exe", args.data());
      log_warning("launcher: cannot start rank ", r, ": execv(/proc/self/exe): ", std::strerror(errno));
      _exit(127);
    }
    pids.push_back(pid);
  }

  using Clock = std::chrono::steady_clock;
  std::vector<bool> done(pids.size(), false);
  int rc = 0;
  size_t running = pids.size();
  bool failed = false, terminated = false, killed = false;
  Clock::time_point fail_at{}, term_at{};
  while (running > 0) {
    if (g_signal) {
      int s = g_signal;
      g_signal = 0;
      log_info("launcher: got signal ", s, "; passing it to the ranks");
      for (size_t i = 0; i < pids.size(); ++i)
        if (!done[i]) kill(pids[i], s);
      if (!failed) {
        failed = true;
        fail_at = Clock::now();
        rc = 128 + s;
      }
    }
    int st = 0;
    pid_t p = waitpid(-1, &st, WNOHANG);
    if (p > 0) {
      for (size_t i = 0; i < pids.size(); ++i) {
        if (pids[i] != p || done[i]) continue;
        done[i] = true;
        --running;
        const bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (!ok && !failed) {
          failed = true;
          fail_at = Clock::now();
          rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
          log_info("launcher: rank ", i, " (pid ", p, ") ", describe(st), "; waiting up to ", opt.grace_s,
                   " s for the other ranks to stop");
        } else if (!ok) {
          log_info("launcher: rank ", i, " (pid ", p, ") ", describe(st));
        }
      }
      continue;
    }
    if (failed && !terminated && Clock::now() - fail_at > std::chrono::duration<double>(opt.grace_s)) {
      log_info("launcher: terminating the ranks still running");
      for (size_t i = 0; i < pids.size(); ++i)
        if (!done[i]) kill(pids[i], SIGTERM);
      terminated = true;
      term_at = Clock::now();
    }
    if (terminated && !killed && Clock::now() - term_at > std::chrono::seconds(10)) {
      for (size_t i = 0; i < pids.size(); ++i)
        if (!done[i]) kill(pids[i], SIGKILL);
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  sigaction(SIGHUP, &old_hup, nullptr);
  return rc;
}

}  // namespace peft::dist
