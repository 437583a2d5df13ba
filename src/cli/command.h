// CLI subcommand registry and a small `--key value` argument parser.
//
//   static int run_inspect(peft::cli::Args& a) { auto dir = a.positional(0, "DIR"); ...; return 0; }
//   PEFT_REGISTER_COMMAND("inspect", "print a checkpoint's config and tensors", run_inspect);
//
// Each subcommand lives in its own src/cli/<name>.cpp; main.cpp only dispatches.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace peft::cli {

/// Parsed command line: `--key value`, `--key=value`, bare `--flag` (value "true"),
/// repeated keys kept in order, and positional arguments.
class Args {
 public:
  Args(std::vector<std::string> argv);
  bool has(const std::string& key) const;
  /// Last value of --key; throws peft::Error naming the option when it is missing.
  std::string get(const std::string& key) const;
  std::string get(const std::string& key, const std::string& dflt) const;
  double get_double(const std::string& key, double dflt) const;
  int64_t get_int(const std::string& key, int64_t dflt) const;
  bool get_bool(const std::string& key, bool dflt) const;
  std::vector<std::string> get_all(const std::string& key) const;
  std::string positional(size_t i, const std::string& what) const;
  const std::vector<std::string>& positionals() const { return pos_; }
  /// Every --key given, in order, with its values (for recipe overrides).
  const std::vector<std::pair<std::string, std::string>>& options() const { return opts_; }
  /// Throws peft::Error for any option not in `known` (call after reading them all).
  void reject_unknown(const std::vector<std::string>& known) const;

 private:
  std::vector<std::pair<std::string, std::string>> opts_;
  std::vector<std::string> pos_;
};

struct Command {
  std::string name;
  std::string help;
  std::function<int(Args&)> run;
};

std::map<std::string, Command>& command_registry();
bool register_command(Command c);

}  // namespace peft::cli

#define PEFT_CLI_CAT2(a, b) a##b
#define PEFT_CLI_CAT(a, b) PEFT_CLI_CAT2(a, b)
#define PEFT_REGISTER_COMMAND(name, help, fn) \
  static const bool PEFT_CLI_CAT(peft_cmd_reg_, __LINE__) = ::peft::cli::register_command({name, help, fn})
