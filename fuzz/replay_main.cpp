// peft_fuzz_replay: runs fuzz targets on saved inputs without libFuzzer (any compiler), the
// regression half of fuzzing: every input that once crashed a target stays in
// tests/fuzz/corpus/<target>/ and is replayed by ctest.
//   peft_fuzz_replay TARGET FILE|DIR...     run one target on files (a folder: every file in it)
//   peft_fuzz_replay --all CORPUS_ROOT      every target on CORPUS_ROOT/<target>/ (if present)
//   peft_fuzz_replay --list                 the target names
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#define PEFT_FUZZ_TARGET(name) extern "C" int peft_fuzz_##name(const uint8_t*, size_t);
#include "fuzz_targets.inc"
#undef PEFT_FUZZ_TARGET

namespace fs = std::filesystem;
using Target = int (*)(const uint8_t*, size_t);

static const std::map<std::string, Target>& targets() {
#define PEFT_FUZZ_TARGET(name) {#name, &peft_fuzz_##name},
  static const std::map<std::string, Target> t = {
#include "fuzz_targets.inc"
  };
#undef PEFT_FUZZ_TARGET
  return t;
}

static std::vector<std::string> files_of(const std::string& p) {
  std::vector<std::string> out;
  if (fs::is_directory(p)) {
    for (auto& e : fs::directory_iterator(p))
      if (e.is_regular_file() && e.path().filename().string()[0] != '.') out.push_back(e.path().string());
    std::sort(out.begin(), out.end());
  } else {
    out.push_back(p);
  }
  return out;
}

static int run(Target t, const std::string& name, const std::vector<std::string>& files) {
  for (auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "peft_fuzz_replay: cannot read %s\n", f.c_str());
      return 1;
    }
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::fprintf(stderr, "  %s\n", f.c_str());  // the last one named is the finding if it aborts
    t(bytes.data(), bytes.size());
  }
  std::printf("%-22s %zu inputs ok\n", name.c_str(), files.size());
  return 0;
}

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.size() == 1 && a[0] == "--list") {
    for (auto& [n, _] : targets()) std::printf("%s\n", n.c_str());
    return 0;
  }
  if (a.size() == 2 && a[0] == "--all") {
    int total = 0;
    for (auto& [n, t] : targets()) {
      fs::path dir = fs::path(a[1]) / n;
      if (!fs::is_directory(dir)) continue;
      std::fprintf(stderr, "replaying %s\n", dir.c_str());
      if (run(t, n, files_of(dir.string())) != 0) return 1;
      ++total;
    }
    std::printf("%d targets replayed\n", total);
    return total > 0 ? 0 : 1;
  }
  if (a.size() >= 2 && targets().count(a[0])) {
    std::vector<std::string> files;
    for (size_t i = 1; i < a.size(); ++i)
      for (auto& f : files_of(a[i])) files.push_back(f);
    return run(targets().at(a[0]), a[0], files);
  }
  std::fprintf(stderr, "usage: peft_fuzz_replay TARGET FILE|DIR... | --all CORPUS_ROOT | --list\n");
  return 2;
}
