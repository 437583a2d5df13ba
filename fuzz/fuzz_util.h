// Shared pieces of the libFuzzer targets in fuzz/ (one file per parser; see fuzz/README.md).
// Each target writes the input to a file with the name the parser expects, calls the public
// loader and accepts exactly two outcomes: success or peft::Error. Any other exception, a
// crash, a sanitizer report or a hang is a finding.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>

#include "peft/error.h"

namespace peft::fuzz {

/// A private folder for this process (removed at exit), e.g. /tmp/peft_fuzz_1234. The name is
/// never destroyed: the atexit handler that removes the folder runs after static destructors.
inline const std::string& work_dir() {
  static const std::string* dir = [] {
    // Memory-backed where there is one: on this project's disks a file rewrite per execution
    // costs ~4 ms of waiting (10x the work itself).
    std::filesystem::path base = access("/dev/shm", W_OK) == 0 && !std::getenv("TMPDIR")
                                     ? std::filesystem::path("/dev/shm")
                                     : std::filesystem::temp_directory_path();
    auto d = base / ("peft_fuzz_" + std::to_string(getpid()));
    std::filesystem::create_directories(d);
    auto* s = new std::string(d.string());
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(work_dir(), ec);
    });
    return s;
  }();
  return *dir;
}

/// Writes the fuzz input to work_dir()/name and returns its path.
inline std::string put(const std::string& name, const uint8_t* data, size_t size) {
  std::string path = work_dir() + "/" + name;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

/// Copies a file of the source tree (PEFT_FUZZ_SOURCE_DIR) into work_dir()/name.
inline void copy_fixture(const std::string& rel, const std::string& name) {
  auto to = std::filesystem::path(work_dir()) / name;
  std::filesystem::create_directories(to.parent_path());
  std::filesystem::copy_file(std::string(PEFT_FUZZ_SOURCE_DIR) + "/" + rel, to,
                             std::filesystem::copy_options::overwrite_existing);
}

/// Runs `fn`; peft::Error is the expected refusal, anything else aborts (a finding).
template <class Fn>
int guarded(Fn&& fn) {
  try {
    fn();
  } catch (const peft::Error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "non-peft exception escaped: %s\n", e.what());
    std::abort();
  }
  return 0;
}

}  // namespace peft::fuzz
