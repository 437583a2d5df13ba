// Data-parallel training on PyTorch's c10d: the torchrun environment, a process group (Gloo on
// CPU, over a c10d TCPStore), gradient buckets, and the local launcher behind
// `peft train --nproc_per_node N`. See docs/DISTRIBUTED.md.
//
//   peft::dist::Env env = peft::dist::Env::from_environment();   // RANK, WORLD_SIZE, ...
//   if (env.distributed()) {
//     auto group = peft::dist::Group::join(env, {/*timeout_s=*/300}, fingerprint);
//     trainer.set_process_group(group);                          // shards data, reduces grads
//   }
//
// Every collective is checked: a rank that dies or hangs makes the others fail with a
// peft::Error naming it (after at most the timeout), never a silent hang.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <exception>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace peft::dist {

/// The launcher's environment (torchrun's names). world_size 1 = not distributed.
struct Env {
  int64_t rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  /// torchrun's static rendezvous hosts the store in its agent (TORCHELASTIC_USE_AGENT_STORE=True):
  /// every rank, rank 0 included, is then a client.
  bool agent_store = false;
  int64_t restart_count = 0;  // TORCHELASTIC_RESTART_COUNT: keys of an earlier attempt are not reused
  bool distributed() const { return world_size > 1; }
  /// Reads RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; none set =
  /// one process. peft::Error for a partial or inconsistent set (RANK >= WORLD_SIZE, ...).
  static Env from_environment();
};

struct GroupOptions {
  double timeout_s = 300;       // joining, every collective, and the store (HF's ddp_timeout)
  std::string backend = "gloo";  // "gloo"; "nccl" only in a build with NCCL (PEFT_HAVE_NCCL)
};

/// A c10d process group. Collectives must be called by every rank in the same order.
class Group {
 public:
  /// Connects to the store (rank 0 hosts it unless env.agent_store), checks that every rank
  /// has the same WORLD_SIZE and the same `fingerprint` (the run's configuration: a mismatch is
  /// a peft::Error naming the rank and the first differing key, raised on every rank), then
  /// creates the process group. Port in use, unreachable store, ranks that never join: errors.
  static std::shared_ptr<Group> join(const Env& env, const GroupOptions& opt, const nlohmann::json& fingerprint);
  ~Group();
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int64_t rank() const;
  int64_t world_size() const;
  bool is_main() const { return rank() == 0; }

  /// In-place sums over the ranks (float32/float64/int64 CPU tensors, contiguous). Launched
  /// together, then waited for, in order.
  void all_reduce_sum(std::vector<torch::Tensor> tensors, const std::string& what);
  /// Starts an in-place sum and returns at once (the tensor must not change until it is done);
  /// finish_pending() waits for every started one, in launch order, with the errors of
  /// all_reduce_sum. Gradient buckets overlap their sums with backward this way.
  void start_all_reduce_sum(torch::Tensor t, const std::string& what);
  void finish_pending();
  /// In place from `root`.
  void broadcast(torch::Tensor t, int64_t root, const std::string& what);
  std::string broadcast_string(const std::string& s, int64_t root, const std::string& what);
  /// Every rank's string, in rank order, on every rank.
  std::vector<std::string> all_gather_strings(const std::string& s, const std::string& what);
  void barrier(const std::string& what);
  /// Called by a rank about to fail with `message`: the others name it in their errors.
  void report_failure(const std::string& message) noexcept;

 private:
  struct Impl;
  explicit Group(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};
using GroupPtr = std::shared_ptr<Group>;

/// The trainable gradients, all-reduced (summed) in flat buffers of about `cap_mb` MiB each
/// (reverse parameter order, as backward produces them), not one call per tensor. A gradient
/// no rank has (a parameter no forward reached) stays undefined, as in a single process.
///
/// Overlap with backward (`overlap`, PyTorch DDP's reducer, Li et al. 2020 sec. 3.2.3): each
/// parameter gets a gradient hook; after arm(), the backward of the optimizer step's last
/// micro-batch copies every final gradient (plus what earlier micro-batches accumulated) into its
/// bucket, and a bucket whose gradients are all in starts its sum at once. Buckets start strictly
/// in bucket order, so every rank issues the same sequence of collectives whatever its backward
/// reached; reduce() starts the rest (a parameter this rank's backward did not reach contributes
/// what its .grad holds, or zeros) and waits.
class GradBuckets {
 public:
  GradBuckets(GroupPtr group, std::vector<torch::Tensor> params, double cap_mb = 25, bool overlap = true);
  ~GradBuckets();
  GradBuckets(const GradBuckets&) = delete;
  GradBuckets& operator=(const GradBuckets&) = delete;
  /// The next backward is the optimizer step's last: its gradient hooks start the buckets'
  /// sums (no-op without overlap).
  void arm();
  /// Sums every parameter's gradient over the ranks (missing = zeros), in place. `stats`
  /// (float64, any length) is summed along in the same round.
  void reduce(torch::Tensor stats);
  /// Rank 0's parameter values to every rank (once, before the first step, as DDP does).
  void broadcast_parameters();
  size_t num_buckets() const { return buckets_.size(); }
  double last_seconds() const { return last_seconds_; }  // wall time of the last reduce()
  /// Buckets whose sum the last step started during backward.
  size_t last_started_in_backward() const { return last_in_backward_; }

 private:
  struct Bucket {
    std::vector<size_t> members;  // indices into params_
    torch::Tensor flat;
    size_t ready = 0;  // members whose gradient is in flat (this step)
    bool started = false;
  };
  /// Parameter m's part of its bucket's flat buffer (a view).
  torch::Tensor slot(size_t m) const { return buckets_[where_[m].first].flat.narrow(0, where_[m].second, params_[m].numel()); }
  void on_gradient(size_t i, const torch::Tensor& grad);
  void start_ready_buckets();
  void start(Bucket& b);
  GroupPtr group_;
  std::vector<torch::Tensor> params_;
  std::vector<Bucket> buckets_;
  std::vector<std::pair<size_t, int64_t>> where_;  // per parameter: (bucket, offset in flat)
  std::vector<char> seen_;                         // per parameter: gradient copied this step
  std::vector<unsigned> hooks_;
  bool overlap_ = true, armed_ = false;
  size_t next_ = 0;  // the first bucket not started
  size_t in_backward_ = 0, last_in_backward_ = 0;
  std::exception_ptr hook_error_;
  double last_seconds_ = 0;
};

/// The run's identity for the cross-rank check: the recipe, the trainable parameters' names,
/// shapes and dtypes, and a hash of the training data's token ids.
nlohmann::json fingerprint(const nlohmann::json& recipe,
                           const std::vector<std::pair<std::string, torch::Tensor>>& trainable,
                           const std::vector<std::vector<int64_t>>& token_ids);

/// The first difference between two fingerprints as "key 'a.b': X here, Y on rank R"-style
/// text ("" when equal).
std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& path = "");

/// An FNV-1a hash of a tensor's bytes (contiguous copy), for the cross-rank divergence check.
uint64_t tensor_hash(const std::vector<torch::Tensor>& ts);

/// `peft train --nproc_per_node N ...`: runs `argv` (the command line without the launcher's
/// keys) N times on this machine with RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set
/// (port: `master_port`, or a free one when 0), forwards SIGINT/SIGTERM/SIGHUP to the ranks,
/// and reports the first rank that fails; the others get `grace_s` to fail by themselves
/// (their own errors name the rank), then are terminated. Returns the exit status.
struct LaunchOptions {
  int64_t nproc = 1;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 0;
  double grace_s = 330;
};
int launch_local(const std::vector<std::string>& argv, const LaunchOptions& opt);

}  // namespace peft::dist
