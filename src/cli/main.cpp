// `peft` — one binary, one subcommand per file in src/cli/.
#include <ATen/Parallel.h>
#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "cli/command.h"
#include "peft/error.h"

static void usage() {
  std::cerr << "usage: peft <command> [options]\n\ncommands:\n";
  for (auto& [name, c] : peft::cli::command_registry())
    std::cerr << "  " << name << std::string(name.size() < 10 ? 10 - name.size() : 1, ' ') << c.help << "\n";
}

int main(int argc, char** argv) {
  // OpenMP reads OMP_WAIT_POLICY when the runtime loads, before main. Spin-waiting threads
  // fight OpenBLAS's for the cores (measured 3x slower training steps), so unless the user
  // chose a policy, set PASSIVE and re-exec once. PEFT_NO_REEXEC=1 keeps the OpenMP runtime's
  // own default (`peft bench --threads-table` measures it).
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("PEFT_NO_REEXEC")) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // falls through if /proc is unavailable
  }
  // LibTorch 1.13 sizes its OpenMP pool from cpuinfo, which on some VMs counts one core where
  // the process may run on several (this project's 2-CPU machine: 1 thread). The bfloat16
  // products (oneDNN) run on that pool, so use every CPU the process may run on unless the user
  // chose a count (OMP_NUM_THREADS; --threads where a command takes it). Measured in
  // docs/PRECISION.md ("threads").
  if (!std::getenv("OMP_NUM_THREADS")) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > at::get_num_threads())
      at::set_num_threads(CPU_COUNT(&set));
  }
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "help") {
    usage();
    return argc < 2 ? 2 : 0;
  }
  auto& reg = peft::cli::command_registry();
  auto it = reg.find(argv[1]);
  if (it == reg.end()) {
    std::cerr << "peft: error: unknown command '" << argv[1] << "'\n";
    usage();
    return 2;
  }
  try {
    peft::cli::Args args(std::vector<std::string>(argv + 2, argv + argc));
    return it->second.run(args);
  } catch (const std::exception& e) {
    std::cerr << "peft: error: " << e.what() << "\n";
    return 1;
  }
}
