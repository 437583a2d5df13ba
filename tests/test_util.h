// Helpers shared by the tests: paths inside the repository, temporary folders, running the CLI.
#pragma once
#include <string>

namespace peft::test {
/// Absolute path of a file in the source tree, e.g. source_path("tests/fixtures/hf/models/llama").
std::string source_path(const std::string& rel);
/// A fresh empty directory under the system temp dir, removed when the process exits.
std::string temp_dir(const std::string& tag);
/// Runs the built `peft` binary with `args` (shell-quoted by the caller); returns exit code,
/// stdout+stderr in *output.
int run_cli(const std::string& args, std::string* output = nullptr);
/// Absolute path of the built `peft` executable.
std::string cli_path();
}  // namespace peft::test
