// One training step (forward + backward + AdamW step) of the small Llama-architecture model of
// `peft bench --small`: LoRA (r 8 on q, v) vs full fine-tuning, for quick before/after checks of
// changes to the step's hot path. The full-size comparison is `peft bench` (docs/BENCHMARKS.md).
//
//   ./build/train_step_bench     # items_per_second = tokens/s (wall clock)
#include <benchmark/benchmark.h>

#include "cli/bench_step.h"

namespace {

void run(benchmark::State& state, const char* method) {
  const peft::cli::BenchShape shape = peft::cli::BenchShape::small();
  peft::cli::StepBench b(shape, method);
  b.step();  // optimizer state allocated outside the timed loop
  for (auto _ : state) benchmark::DoNotOptimize(b.step());
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * shape.tokens_per_step()));
}

void BM_TrainStepLoRA(benchmark::State& state) { run(state, "lora"); }
void BM_TrainStepFull(benchmark::State& state) { run(state, "full"); }

BENCHMARK(BM_TrainStepLoRA)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_TrainStepFull)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
