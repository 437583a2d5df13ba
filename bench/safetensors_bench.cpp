// load_safetensors throughput vs. plainly reading the same file into memory (same run, warm
// page cache). Every benchmark reads every byte once (a 64-bit word sum), so the numbers
// compare "bytes usable as tensors" per second. The ~200 MB file is written to /tmp once.
//
//   ./build/safetensors_bench   # bytes_per_second (wall clock) column: compare the rows
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "peft/io.h"

namespace {

const std::string& bench_file() {
  static const std::string path = [] {
    std::string p = "/tmp/peft_safetensors_bench_" + std::to_string(getpid()) + ".safetensors";
    peft::TensorMap w;
    torch::manual_seed(0);
    // 48 x 4 MiB float32 + a few odd-sized bf16/int tensors: ~200 MB.
    for (int i = 0; i < 48; ++i) w["layers." + std::to_string(i) + ".weight"] = torch::randn({1024, 1024});
    w["embed.bf16"] = torch::randn({3000, 1001}).to(torch::kBFloat16);
    w["ids.i64"] = torch::arange(100003, torch::kLong);
    peft::save_safetensors(p, w, {{"format", "pt"}});
    return p;
  }();
  // Registered after `path` is constructed, so it runs before `path` is destroyed.
  static const bool cleanup = std::atexit([] { std::remove(path.c_str()); }) == 0;
  (void)cleanup;
  return path;
}

uint64_t file_size() { return std::filesystem::file_size(bench_file()); }

// Sum of 64-bit words (+ tail bytes): reads every byte, cheap enough to stay memory bound.
uint64_t touch(const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint64_t s = 0, w;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::memcpy(&w, p + i, 8);
    s += w;
  }
  for (; i < n; ++i) s += p[i];
  return s;
}

void BM_LoadSafetensors(benchmark::State& state) {
  const std::string& path = bench_file();
  for (auto _ : state) {
    peft::TensorMap w = peft::load_safetensors(path);
    uint64_t s = 0;
    for (auto& [name, t] : w) s += touch(t.data_ptr(), t.numel() * t.element_size());
    benchmark::DoNotOptimize(s);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * file_size()));
}

// read() into a fresh buffer each time, as a naive loader would (pays the page faults too).
void BM_ReadIntoNewBuffer(benchmark::State& state) {
  const std::string& path = bench_file();
  const size_t n = file_size();
  for (auto _ : state) {
    std::unique_ptr<char[]> buf(new char[n]);
    int fd = ::open(path.c_str(), O_RDONLY);
    size_t done = 0;
    while (done < n) {
      ssize_t r = ::read(fd, buf.get() + done, n - done);
      if (r <= 0) break;
      done += static_cast<size_t>(r);
    }
    ::close(fd);
    if (done != n) state.SkipWithError("short read");
    benchmark::DoNotOptimize(touch(buf.get(), n));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
}

// fread() into one reused buffer: the cheapest possible copy out of the page cache.
void BM_FreadIntoReusedBuffer(benchmark::State& state) {
  const std::string& path = bench_file();
  const size_t n = file_size();
  std::unique_ptr<char[]> buf(new char[n]);
  std::memset(buf.get(), 0, n);
  for (auto _ : state) {
    FILE* f = std::fopen(path.c_str(), "rb");
    size_t got = std::fread(buf.get(), 1, n, f);
    std::fclose(f);
    if (got != n) state.SkipWithError("short read");
    benchmark::DoNotOptimize(touch(buf.get(), n));
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
}

BENCHMARK(BM_LoadSafetensors)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_ReadIntoNewBuffer)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();
BENCHMARK(BM_FreadIntoReusedBuffer)->Unit(benchmark::kMillisecond)->MinTime(2.0)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
