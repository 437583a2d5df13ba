// Small pieces the CLI subcommands that drive other `peft` processes share (`peft bench`,
// `peft assess`): the running binary's path, child processes, comma-separated option lists.
#pragma once
#include <string>
#include <vector>

namespace peft::cli {

/// Path of the running `peft` binary (/proc/self/exe); `who` names the command in the error.
std::string self_exe(const std::string& who);

/// "a,b,,c" -> {"a", "b", "c"} (empty items dropped).
std::vector<std::string> split_commas(const std::string& s);

/// A child process's exit status, wall time and peak resident set (wait4's ru_maxrss).
struct ChildRun {
  int status = -1;  // exit code; 128 + signal when killed
  double wall_s = 0;
  double peak_rss_mib = 0;
};

/// Runs argv[0] with `argv`, stdout and stderr appended to `log_path`; waits for it.
ChildRun run_child(const std::vector<std::string>& argv, const std::string& log_path);

}  // namespace peft::cli
