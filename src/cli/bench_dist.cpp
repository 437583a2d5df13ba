#include "cli/bench_dist.h"

#include <chrono>
#include <iostream>

#include "peft/dist.h"
#include "peft/error.h"

namespace peft::cli {

int run_dist_worker(const Args& a, const BenchShape& shape) {
  const int64_t n = a.get_int("dist_worker", 1);
  PEFT_CHECK(n >= 1, "bench: --dist_worker must be >= 1");
  const dist::Env env = dist::Env::from_environment();
  if (n > 1 && !env.distributed()) {
    std::vector<std::string> argv = {"bench"};
    for (auto& [k, v] : a.options()) argv.push_back("--" + k + "=" + v);
    dist::LaunchOptions lo;
    lo.nproc = n;
    lo.grace_s = 60;
    return dist::launch_local(argv, lo);
  }
  PEFT_CHECK(env.world_size == n, "bench: --dist_worker ", n, " but WORLD_SIZE=", env.world_size);
  torch::set_num_threads(1);
  const int64_t warmup = a.get_int("warmup", 1), steps = a.get_int("steps", 3);
  StepBench b(shape, "lora", warmup + steps);
  std::shared_ptr<dist::Group> group;
  std::unique_ptr<dist::GradBuckets> buckets;
  double wait_s = 0;
  if (env.distributed()) {
    group = dist::Group::join(env, dist::GroupOptions(), {{"bench", shape.config()}});
    buckets = std::make_unique<dist::GradBuckets>(group, b.trainable_params(), a.get_double("ddp_bucket_cap_mb", 25),
                                                  a.get_bool("ddp_overlap", true));
    b.before_backward = [&] { buckets->arm(); };
    // The barrier first separates waiting for the slower rank from the gradient sum itself.
    b.before_update = [&] {
      auto t0 = std::chrono::steady_clock::now();
      group->barrier("benchmark: ranks ready to sum");
      wait_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      buckets->reduce(torch::Tensor());
    };
  }
  std::vector<double> times, reduce, waits, overlapped;
  for (int64_t i = 0; i < warmup + steps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    b.step();
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= warmup) {
      times.push_back(dt);
      reduce.push_back(buckets ? buckets->last_seconds() : 0.0);
      waits.push_back(wait_s);
      overlapped.push_back(buckets ? static_cast<double>(buckets->last_started_in_backward()) : 0.0);
    }
  }
  if (group) group->barrier("end of the benchmark");
  if (env.rank != 0) return 0;
  auto med = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  };
  const double step_s = med(times);
  std::cout << nlohmann::json{{"ranks", n},
                              {"step_s", step_s},
                              {"allreduce_s", med(reduce)},
                              {"wait_s", med(waits)},
                              {"buckets", buckets ? buckets->num_buckets() : 0},
                              {"buckets_started_in_backward", med(overlapped)},
                              {"trainable", b.trainable},
                              {"tokens_per_s", static_cast<double>(n * shape.tokens_per_step()) / step_s}}
                   .dump()
            << std::endl;
  return 0;
}

}  // namespace peft::cli
