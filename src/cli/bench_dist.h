// `peft bench --suites dist`: the LoRA training step data-parallel over N local ranks x 1 thread.
#pragma once
#include "cli/bench_step.h"
#include "cli/command.h"

namespace peft::cli {
/// `peft bench --dist_worker N <shape> --warmup W --steps S`: N > 1 without RANK set launches N
/// ranks of itself; each rank runs the LoRA StepBench with its gradients summed over the ranks
/// (peft::dist::GradBuckets). Rank 0 prints one JSON line: ranks, step_s (median), allreduce_s
/// (median per step, the gradient sum alone), wait_s (median time
/// waiting for the slower rank, a barrier before the sum), tokens_per_s (all ranks together).
int run_dist_worker(const Args& a, const BenchShape& shape);
}  // namespace peft::cli
