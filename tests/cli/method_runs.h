// Shared by the CLI tests that train every method briefly on the bundled stories260K
// (train_methods_test, precision_cli_test) and by assess_test: the first rows of a data file,
// and the options each method needs on this model in ~15 steps.
#pragma once
#include <fstream>
#include <string>

namespace peft::test {

/// Copies the first n lines of `from` to `to`; returns `to`.
inline std::string head_lines(const std::string& from, const std::string& to, int n) {
  std::ifstream in(from);
  std::ofstream out(to);
  std::string line;
  for (int i = 0; i < n && std::getline(in, line); ++i) out << line << "\n";
  return to;
}

/// Options a method needs on this model or in 15 steps (everything else: the preset).
inline std::string short_run_options(const std::string& m) {
  if (m == "bitfit") return " --add_missing_biases true";  // Llama has no biases
  if (m == "sparse-delta" || m == "diff-pruning") return " --density 0.05";
  if (m == "fish-mask") return " --density 0.05 --fisher_batches 2";
  if (m == "child-tuning-d") return " --reserve_p 0.05 --fisher_batches 2";
  if (m == "lt-sft") return " --density 0.05 --phase1_steps 5";
  if (m == "compacter" || m == "compacter++") return " --reduction_factor 4";  // phm_dim 4 must divide 64 / rf
  if (m == "composite") return " --components '[{\"peft_type\": \"LORA\", \"r\": 4}, {\"peft_type\": \"IA3\"}]'";
  if (m == "adalora") return " --init_r 4 --target_r 2 --tinit 2 --tfinal 3";
  return "";
}

}  // namespace peft::test
