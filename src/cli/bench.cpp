// `peft bench`: memory and speed of one training step (forward + backward + AdamW step) of a
// randomly initialised Llama-architecture model (~109M parameters; --small for CI), fully
// fine-tuned vs each PEFT method, in one run so that ratios share the machine's load.
//
//   peft bench                          # methods table: trainable %, peak RSS, tokens/s vs full
//   peft bench --threads-table          # + LoRA step under OMP_WAIT_POLICY / thread counts
//   peft bench --compare-python         # + the same step in plain PyTorch (bench/pytorch_lora_step.py)
//   peft bench --small --out r.json     # tiny model, one repeat: seconds
//   peft bench --dtype bfloat16         # full and LoRA on a float32 and a bfloat16 base, side by side
//   peft bench --suites dist --medium   # LoRA step data-parallel: 2 ranks x 1 thread vs 1 (c10d Gloo)
//   peft bench --suites multi --medium  # 8 LoRA adapters in one mixed batch vs one merged adapter
//   peft bench --worker lora --dtype bfloat16 --profile t.json  # one configuration, operator trace
//
// Every measurement runs in a fresh child process (`peft bench --worker METHOD ...`), so peak
// RSS (VmHWM, reset after the model is built) belongs to one configuration only. Rounds are
// interleaved (full, lora, dora, ..., full, lora, ...) and ratios are medians of per-round
// ratios, which cancels most of the drift of a shared machine's load.
#include <torch/csrc/autograd/profiler.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>

#include "cli/bench_dist.h"
#include "cli/bench_multi.h"
#include "cli/bench_step.h"
#include "models/checkpoint.h"
#include "cli/command.h"
#include "cli/process.h"
#include "cli/quant_args.h"
#include "peft/error.h"
#include "peft/io.h"
#include "peft/tuner.h"

namespace fs = std::filesystem;

namespace peft::cli {
namespace {

// LST (ladder side-tuning) runs no backward through the backbone: its row shows that saving.
const std::vector<std::string> kDefaultMethods = {"full", "lora", "dora", "ia3", "vera", "loha", "lokr", "adalora", "lst"};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return q + "'";
}

std::string fixed(double v, int prec) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << v;
  return os.str();
}

std::string read_first_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);
  return line;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

// ---- worker: one configuration, one process ----------------------------------------------------

BenchShape shape_from_args(const Args& a) {
  BenchShape s = a.get_bool("small", false) ? BenchShape::small() : a.get_bool("medium", false) ? BenchShape::medium() : BenchShape();
  if (a.has("shape")) {
    const std::string name = a.get("shape");
    PEFT_CHECK(name == "llama3-8b", "bench: option --shape '", name, "' is not known (known: llama3-8b)");
    s = BenchShape::llama3_8b();
  }
  s.kv_heads = a.get_int("kv_heads", s.kv_heads);
  s.rope_theta = a.get_double("rope_theta", s.rope_theta);
  s.hidden = a.get_int("hidden", s.hidden);
  s.layers = a.get_int("layers", s.layers);
  s.heads = a.get_int("heads", s.heads);
  s.intermediate = a.get_int("intermediate", s.intermediate);
  s.vocab = a.get_int("vocab", s.vocab);
  s.batch = a.get_int("batch", s.batch);
  s.seq = a.get_int("seq", s.seq);
  PEFT_CHECK(s.hidden > 0 && s.layers > 0 && s.heads > 0 && s.intermediate > 0 && s.vocab > 0 && s.batch > 0 &&
                 s.seq > 1,
             "bench: sizes must be positive (and --seq > 1)");
  PEFT_CHECK(s.hidden % s.heads == 0 && (s.hidden / s.heads) % 2 == 0,
             "bench: --hidden must be a multiple of --heads with an even head size");
  PEFT_CHECK(s.kv_heads >= 0 && (s.kv_heads == 0 || s.heads % s.kv_heads == 0),
             "bench: --heads must be a multiple of --kv_heads");
  return s;
}

std::string shape_args(const BenchShape& s) {
  return " --hidden " + std::to_string(s.hidden) + " --layers " + std::to_string(s.layers) + " --heads " +
         std::to_string(s.heads) + " --intermediate " + std::to_string(s.intermediate) + " --vocab " +
         std::to_string(s.vocab) + " --batch " + std::to_string(s.batch) + " --seq " + std::to_string(s.seq) +
         (s.kv_heads > 0 ? " --kv_heads " + std::to_string(s.kv_heads) : std::string()) + " --rope_theta " +
         fixed(s.rope_theta, 1);
}

int run_worker(const Args& a) {
  const std::string method = a.get("worker");
  const BenchShape s = shape_from_args(a);
  const torch::Dtype dtype = parse_dtype_name(a.get("dtype", "float32"), "bench: option --dtype", false);
  const int64_t warmup = a.get_int("warmup", 1), steps = a.get_int("steps", 3);
  if (a.has("threads")) torch::set_num_threads(static_cast<int>(a.get_int("threads", 1)));
  std::optional<quant::QuantConfig> q = quant_config_from_args(a);
  if (q && !a.has("compute_dtype")) q->compute_dtype = torch::kBFloat16;  // the bench measures the fast path
  nlohmann::json overrides;
  if (a.has("adapter_overrides")) {
    try {
      overrides = nlohmann::json::parse(a.get("adapter_overrides"));
    } catch (const std::exception& e) {
      fail("bench: option --adapter_overrides is not JSON: ", e.what());
    }
  }
  Rss start = read_rss();
  StepBench b(s, method, warmup + steps, dtype, q ? &*q : nullptr, overrides);
  const MemoryOptions mem{a.get_bool("gradient_checkpointing", false), a.get_int("loss_chunk_tokens", 0)};
  set_memory_options(b.model(), mem);  // docs/MEMORY.md
  Rss before = read_rss();
  bool reset = reset_peak_rss();
  Rss base = read_rss();  // after a reset VmHWM == VmRSS; otherwise the construction peak stays
  std::vector<double> times;
  double first_loss = 0, last_loss = 0;
  // --profile FILE: LibTorch's operator profiler over the timed steps, as a Chrome trace
  // (chrome://tracing, or sum "dur" per "name" for a table of where the step goes).
  std::unique_ptr<torch::autograd::profiler::RecordProfile> profile;
  for (int64_t i = 0; i < warmup + steps; ++i) {
    if (i == warmup && a.has("profile")) profile = std::make_unique<torch::autograd::profiler::RecordProfile>(a.get("profile"));
    auto t0 = std::chrono::steady_clock::now();
    double loss = b.step();
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i == 0) first_loss = loss;
    last_loss = loss;
    if (i >= warmup) times.push_back(dt);
  }
  profile.reset();  // writes the trace
  Rss after = read_rss();
  PEFT_CHECK(std::isfinite(last_loss), "bench: the loss of ", method, " is ", last_loss);
  const double step_s = median(times);
  nlohmann::json r = {{"method", method},
                      {"dtype", dtype_name(dtype)},
                      {"quantize", q ? quant::quant_type_name(q->type) : std::string()},
                      {"quantized_layers", b.quantized_layers},
                      {"quant_bits_per_param", b.quant_bits_per_param},
                      {"quant_bits_per_param_blocks", b.quant_bits_per_param_blocks},
                      {"trainable", b.trainable},
                      {"total", b.total},
                      {"targeted_modules", b.targeted_modules},
                      {"adapter_config", b.adapter_config},
                      {"threads", at::get_num_threads()},
                      {"gradient_checkpointing", mem.gradient_checkpointing},
                      {"loss_chunk_tokens", mem.loss_chunk_tokens},
                      {"rss_start_mib", start.rss_kib / 1024.0},
                      {"rss_model_mib", before.rss_kib / 1024.0},
                      {"peak_rss_mib", after.hwm_kib / 1024.0},
                      {"step_peak_mib", (after.hwm_kib - (reset ? base.rss_kib : before.rss_kib)) / 1024.0},
                      {"peak_reset", reset},
                      {"step_s", times},
                      {"median_step_s", step_s},
                      {"tokens_per_s", step_s > 0 ? s.tokens_per_step() / step_s : 0.0},
                      {"first_loss", first_loss},
                      {"last_loss", last_loss}};
  std::cout << r.dump() << std::endl;
  return 0;
}

// ---- driver ------------------------------------------------------------------------------------

// Runs `cmd` through the shell; returns the last stdout line that parses as a JSON object.
nlohmann::json run_json_child(const std::string& cmd, const std::string& what) {
  FILE* p = popen(cmd.c_str(), "r");
  PEFT_CHECK(p, "bench: cannot start ", what);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = pclose(p);
  nlohmann::json last;
  std::istringstream is(out);
  std::string line;
  while (std::getline(is, line)) {
    if (line.empty() || line[0] != '{') continue;
    try {
      last = nlohmann::json::parse(line);
    } catch (...) {
    }
  }
  PEFT_CHECK(rc == 0 && last.is_object(), "bench: ", what, " failed (exit status ", rc, "): ", cmd, "\n", out);
  return last;
}

struct Driver {
  BenchShape shape;
  int64_t warmup = 1, steps = 3, repeats = 3;
  double bucket_mb = 25;  // the dist suite's gradient buckets (--ddp_bucket_cap_mb)
  std::string exe;
  bool quiet = false;
  std::string memory_args;   // --gradient_checkpointing / --loss_chunk_tokens, for every peft.cpp row
  std::string quant_args;    // --quantize ... for the quantized rows ("lora@nf4")
  std::string quant_type;    // nf4, fp4, int8 or empty
  std::string storage_dtype = "float32";  // --dtype: the quantized rows' unquantized tensors too
  std::string adapter_overrides;          // JSON object or empty

  // `method` may carry a dtype or the quantization type: "lora@bfloat16", "lora@nf4".
  std::string worker_cmd(const std::string& method_at, const std::string& env = "", int64_t threads = 0) const {
    std::string c = env.empty() ? "" : "env " + env + " ";
    const auto at = method_at.find('@');
    const std::string method = method_at.substr(0, at);
    c += quote(exe) + " bench --worker " + quote(method) + shape_args(shape) + " --warmup " + std::to_string(warmup) +
         " --steps " + std::to_string(steps) + memory_args;
    if (at != std::string::npos) {
      const std::string suffix = method_at.substr(at + 1);
      if (!quant_type.empty() && suffix == quant_type)
        c += quant_args + " --dtype " + quote(storage_dtype);
      else
        c += " --dtype " + quote(suffix);
    }
    if (!adapter_overrides.empty() && method != "full") c += " --adapter_overrides " + quote(adapter_overrides);
    if (threads > 0) c += " --threads " + std::to_string(threads);
    return c;
  }
  void progress(const std::string& msg) const {
    if (!quiet) std::cerr << "bench: " << msg << std::endl;
  }
};

// Median over rounds of each per-run metric, and of per-round ratios to `ref`.
nlohmann::json summarize(const std::vector<std::vector<nlohmann::json>>& rounds, const std::vector<std::string>& keys,
                         size_t ref) {
  nlohmann::json rows = nlohmann::json::array();
  for (size_t i = 0; i < keys.size(); ++i) {
    std::vector<double> tps, peak, step_peak, tps_ratio, mem_ratio, model;
    for (auto& round : rounds) {
      const auto& r = round[i];
      const auto& f = round[ref];
      tps.push_back(r["tokens_per_s"].get<double>());
      peak.push_back(r["peak_rss_mib"].get<double>());
      step_peak.push_back(r["step_peak_mib"].get<double>());
      model.push_back(r["rss_model_mib"].get<double>());
      tps_ratio.push_back(r["tokens_per_s"].get<double>() / f["tokens_per_s"].get<double>());
      mem_ratio.push_back(r["peak_rss_mib"].get<double>() / f["peak_rss_mib"].get<double>());
    }
    const auto& r0 = rounds[0][i];
    rows.push_back({{"name", keys[i]},
                    {"trainable", r0["trainable"]},
                    {"total", r0["total"]},
                    {"trainable_percent", 100.0 * r0["trainable"].get<double>() / r0["total"].get<double>()},
                    {"targeted_modules", r0["targeted_modules"]},
                    {"threads", r0["threads"]},
                    {"rss_model_mib", median(model)},
                    {"peak_rss_mib", median(peak)},
                    {"step_peak_mib", median(step_peak)},
                    {"peak_ratio", median(mem_ratio)},
                    {"tokens_per_s", median(tps)},
                    {"tokens_per_s_ratio", median(tps_ratio)}});
  }
  return rows;
}

std::string pad(const std::string& s, size_t w, bool right = true) {
  if (s.size() >= w) return s;
  return right ? std::string(w - s.size(), ' ') + s : s + std::string(w - s.size(), ' ');
}

void print_table(std::ostream& os, const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(head.size());
  for (size_t c = 0; c < head.size(); ++c) {
    w[c] = head[c].size();
    for (auto& r : rows) w[c] = std::max(w[c], r[c].size());
  }
  auto line = [&](const std::vector<std::string>& r) {
    os << "|";
    for (size_t c = 0; c < r.size(); ++c) os << " " << pad(r[c], w[c], c > 0) << " |";
    os << "\n";
  };
  line(head);
  os << "|";
  for (size_t c = 0; c < head.size(); ++c) os << std::string(w[c] + 1, '-') << (c ? ":" : "-") << "|";
  os << "\n";
  for (auto& r : rows) line(r);
}

// Data-parallel LoRA step: 1 rank x 1 thread vs 2 ranks x 1 thread, each rank with the full
// per-device batch (weak scaling), the 2 ranks with the buckets' sums started during backward
// (as DDP) and after it. Efficiency = tokens/s of 2 ranks / (2 x tokens/s of 1).
nlohmann::json dist_suite(const Driver& d, std::ostream& os) {
  std::vector<double> t1, t2, t2s, eff, red, reds, wait, s1, s2, s2s, started;
  nlohmann::json runs = nlohmann::json::array();
  auto cmd = [&](int n, bool overlap) {
    return quote(d.exe) + " bench --dist_worker " + std::to_string(n) + shape_args(d.shape) + " --warmup " +
           std::to_string(d.warmup) + " --steps " + std::to_string(d.steps) + " --ddp_bucket_cap_mb " +
           fixed(d.bucket_mb, 6) + " --ddp_overlap " + (overlap ? "true" : "false");
  };
  int64_t buckets = 0;
  for (int64_t r = 0; r < d.repeats; ++r) {
    d.progress("dist round " + std::to_string(r + 1) + ": 1 rank");
    auto one = run_json_child("env OMP_NUM_THREADS=1 " + cmd(1, true), "1-rank LoRA step");
    d.progress("dist round " + std::to_string(r + 1) + ": 2 ranks");
    auto two = run_json_child("env OMP_NUM_THREADS=1 " + cmd(2, true), "2-rank LoRA step");
    d.progress("dist round " + std::to_string(r + 1) + ": 2 ranks, sums after backward");
    auto after = run_json_child("env OMP_NUM_THREADS=1 " + cmd(2, false), "2-rank LoRA step (sums after backward)");
    t1.push_back(one["tokens_per_s"].get<double>());
    t2.push_back(two["tokens_per_s"].get<double>());
    t2s.push_back(after["tokens_per_s"].get<double>());
    s1.push_back(one["step_s"].get<double>());
    s2.push_back(two["step_s"].get<double>());
    s2s.push_back(after["step_s"].get<double>());
    red.push_back(two["allreduce_s"].get<double>());
    reds.push_back(after["allreduce_s"].get<double>());
    wait.push_back(two["wait_s"].get<double>());
    started.push_back(two["buckets_started_in_backward"].get<double>());
    buckets = two["buckets"].get<int64_t>();
    eff.push_back(t2.back() / (2 * t1.back()));
    runs.push_back({{"one", one}, {"two", two}, {"two_after_backward", after}});
  }
  os << "\n## data-parallel LoRA step (c10d Gloo on loopback, 1 thread per rank, batch " << d.shape.batch
     << " x seq " << d.shape.seq << " per rank)\n\n";
  print_table(os, {"ranks x threads", "tokens/s", "step s", "all-reduce s/step", "wait s/step", "scaling efficiency"},
              {{"1 x 1", fixed(median(t1), 0), fixed(median(s1), 3), "-", "-", "-"},
               {"2 x 1", fixed(median(t2), 0), fixed(median(s2), 3), fixed(median(red), 4), fixed(median(wait), 4),
                fixed(median(eff), 2)},
               {"2 x 1, sums after backward", fixed(median(t2s), 0), fixed(median(s2s), 3), fixed(median(reds), 4), "-",
                fixed(median(t2s) / (2 * median(t1)), 2)}});
  os << "\nall-reduce: the time spent in the gradient sum after backward (" << buckets << " bucket(s) of <= "
     << fixed(d.bucket_mb, 3) << " MiB; " << fixed(median(started), 1)
     << " started during backward); wait: for the slower rank (a barrier before the sum); scaling "
        "efficiency = tokens/s(2) / (2 x tokens/s(1)), median of "
     << d.repeats << " rounds\n";
  return {{"tokens_per_s_1", median(t1)}, {"tokens_per_s_2", median(t2)}, {"allreduce_s", median(red)},
          {"tokens_per_s_2_after_backward", median(t2s)}, {"allreduce_s_after_backward", median(reds)},
          {"buckets", buckets}, {"buckets_started_in_backward", median(started)}, {"wait_s", median(wait)},
          {"scaling_efficiency", median(eff)}, {"runs", runs}};
}

nlohmann::json methods_suite(const Driver& d, const std::vector<std::string>& methods, std::ostream& os) {
  std::vector<std::vector<nlohmann::json>> rounds;
  for (int64_t r = 0; r < d.repeats; ++r) {
    std::vector<nlohmann::json> round;
    for (auto& m : methods) {
      d.progress("round " + std::to_string(r + 1) + "/" + std::to_string(d.repeats) + ": " + m);
      round.push_back(run_json_child(d.worker_cmd(m), "the " + m + " step"));
    }
    rounds.push_back(round);
  }
  size_t ref = std::find(methods.begin(), methods.end(), "full") - methods.begin();
  if (ref == methods.size()) ref = 0;  // no full row (--shape llama3-8b): ratios to the first row
  auto rows = summarize(rounds, methods, ref);
  os << "\n## Methods: one training step (batch " << d.shape.batch << " x seq " << d.shape.seq << ", median of "
     << d.repeats << " rounds; ratios to full fine-tuning in the same round)\n\n";
  std::vector<std::vector<std::string>> t;
  for (auto& r : rows)
    t.push_back({r["name"].get<std::string>(), std::to_string(r["trainable"].get<int64_t>()),
                 fixed(r["trainable_percent"].get<double>(), 3), std::to_string(r["targeted_modules"].get<int64_t>()),
                 fixed(r["peak_rss_mib"].get<double>(), 0), fixed(r["step_peak_mib"].get<double>(), 0),
                 fixed(r["peak_ratio"].get<double>(), 2), fixed(r["tokens_per_s"].get<double>(), 1),
                 fixed(r["tokens_per_s_ratio"].get<double>(), 2)});
  print_table(os, {"method", "trainable", "%", "modules", "peak MiB", "step MiB", "peak/full", "tokens/s", "speed/full"}, t);
  os << "\npeak MiB: the process's peak RSS (model + step); step MiB: peak growth over the RSS before the first step"
        " (gradients, optimizer state, activations).\n";
  for (size_t i = 0; i < methods.size(); ++i) {
    const auto& r0 = rounds[0][i];
    if (r0.value("quantized_layers", 0) == 0) continue;
    std::vector<double> st;
    for (auto& round : rounds) st.push_back(round[i]["median_step_s"].get<double>());
    os << "- " << methods[i] << ": " << r0["quantized_layers"].get<int64_t>() << " quantized Linear layers, "
       << fixed(r0["quant_bits_per_param"].get<double>(), 3) << " bits per parameter ("
       << fixed(r0["quant_bits_per_param_blocks"].get<double>(), 3) << " without the per-layer code tables), "
       << fixed(median(st), 2) << " s per step\n";
  }
  return {{"rows", rows}, {"runs", rounds}};
}

// Each method on the half base against itself in float32, per round (docs/PRECISION.md).
nlohmann::json precision_table(const nlohmann::json& suite, const std::vector<std::string>& methods,
                               const std::string& dtype, std::ostream& os) {
  nlohmann::json out = nlohmann::json::object();
  std::vector<std::vector<std::string>> t;
  for (size_t i = 0; i < methods.size(); ++i) {
    const auto at = methods[i].find('@');
    if (at == std::string::npos) continue;
    const std::string base = methods[i].substr(0, at);
    const size_t j = std::find(methods.begin(), methods.end(), base) - methods.begin();
    if (j == methods.size()) continue;
    std::vector<double> speed, peak, model;
    for (auto& round : suite["runs"]) {
      speed.push_back(round[i]["tokens_per_s"].get<double>() / round[j]["tokens_per_s"].get<double>());
      peak.push_back(round[i]["peak_rss_mib"].get<double>() / round[j]["peak_rss_mib"].get<double>());
      model.push_back(round[i]["rss_model_mib"].get<double>() / round[j]["rss_model_mib"].get<double>());
    }
    out[base] = {{"speed_ratio", median(speed)}, {"peak_rss_ratio", median(peak)}, {"model_rss_ratio", median(model)}};
    t.push_back({base, fixed(median(speed), 2), fixed(median(peak), 2), fixed(median(model), 2)});
  }
  os << "\n## " << dtype << " base vs float32, same method (medians of per-round ratios)\n\n";
  print_table(os, {"method", "tokens/s " + dtype + " / float32", "peak RSS ratio", "model RSS ratio"}, t);
  os << "\n" << dtype << ": frozen weights stored and multiplied in " << dtype
     << "; trainable tensors, gradients and AdamW state in float32; activations in " << dtype
     << " for LoRA (as transformers with a " << dtype << " model), float32 for full (float32 master weights).\n";
  return out;
}

struct ThreadConfig {
  std::string label, env;
  int64_t threads;
};

nlohmann::json threads_suite(const Driver& d, std::ostream& os) {
  const int64_t n = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const std::string nt = std::to_string(n) + (n == 1 ? " thread" : " threads");
  std::vector<ThreadConfig> cfgs = {
      {"PASSIVE, " + nt, "OMP_WAIT_POLICY=PASSIVE", n},
      {"unset (libgomp default), " + nt, "-u OMP_WAIT_POLICY PEFT_NO_REEXEC=1", n},
      {"ACTIVE, " + nt, "OMP_WAIT_POLICY=ACTIVE", n},
      {"PASSIVE, 1 thread", "OMP_WAIT_POLICY=PASSIVE", 1},
      {"ACTIVE, 1 thread", "OMP_WAIT_POLICY=ACTIVE", 1},
      {"PASSIVE, 1 thread, OPENBLAS_NUM_THREADS=1", "OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1", 1},
  };
  std::vector<std::string> labels;
  for (auto& c : cfgs) labels.push_back(c.label);
  std::vector<std::vector<nlohmann::json>> rounds;
  for (int64_t r = 0; r < d.repeats; ++r) {
    std::vector<nlohmann::json> round;
    for (auto& c : cfgs) {
      d.progress("threads round " + std::to_string(r + 1) + "/" + std::to_string(d.repeats) + ": " + c.label);
      round.push_back(run_json_child(d.worker_cmd("lora", c.env, c.threads), "the lora step (" + c.label + ")"));
    }
    rounds.push_back(round);
  }
  auto rows = summarize(rounds, labels, 0);
  os << "\n## Threads: the LoRA step under OpenMP wait policies and thread counts (median of " << d.repeats
     << " rounds; ratio to the first row in the same round)\n\n";
  std::vector<std::vector<std::string>> t;
  for (auto& r : rows)
    t.push_back({r["name"].get<std::string>(), std::to_string(r["threads"].get<int64_t>()),
                 fixed(r["tokens_per_s"].get<double>(), 1), fixed(r["tokens_per_s_ratio"].get<double>(), 2),
                 fixed(1000.0 * d.shape.tokens_per_step() / r["tokens_per_s"].get<double>(), 0)});
  print_table(os, {"configuration", "torch threads", "tokens/s", "speed vs first", "ms/step"}, t);
  return {{"rows", rows}, {"runs", rounds}};
}

std::string find_python_script(const Args& a) {
  if (a.has("python_script")) return a.get("python_script");
  std::vector<fs::path> cands;
  if (const char* src = std::getenv("PEFT_SOURCE_DIR")) cands.push_back(fs::path(src) / "bench/pytorch_lora_step.py");
  fs::path exe_dir = fs::path(self_exe("bench")).parent_path();
  cands.push_back(exe_dir / "../bench/pytorch_lora_step.py");
  cands.push_back(exe_dir / "../../bench/pytorch_lora_step.py");
  cands.push_back("bench/pytorch_lora_step.py");
  for (auto& c : cands)
    if (fs::exists(c)) return fs::weakly_canonical(c).string();
  fail("bench: bench/pytorch_lora_step.py not found; pass --python-script PATH");
}

nlohmann::json python_suite(const Driver& d, const Args& a, std::ostream& os) {
  PEFT_CHECK(!a.has("shape") && !a.has("adapter_overrides"),
             "bench: the python suite runs the bench's own shapes and LoRA config (r 8 on q, v); it does not take "
             "--shape or --adapter_overrides");
  const std::string py = a.get("python", "/usr/bin/python3");
  const std::string script = find_python_script(a);
  {
    std::string probe = quote(py) + " -c 'import torch, json; print(json.dumps({\"torch\": torch.__version__}))'";
    FILE* p = popen((probe + " 2>/dev/null").c_str(), "r");
    std::string out;
    char buf[256];
    size_t n;
    while (p && (n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int rc = p ? pclose(p) : -1;
    PEFT_CHECK(rc == 0, "bench --compare-python: ", py,
               " cannot import torch. Install Debian's PyTorch (apt-get install -y python3-torch) or run "
               "bench/compare_python.sh, which does.");
  }
  // --dtype bfloat16 adds LoRA on a bfloat16 base on both sides (Python: the base in bfloat16, the
  // factors in float32, as peft's autocast_adapter_dtype).
  const std::string dt = a.get("dtype", "float32");
  std::vector<std::string> runs = {"lora", "full"};
  if (dt != "float32") runs.push_back("lora@" + dt);
  std::vector<std::string> labels;
  for (auto& m : runs) {
    auto name = m.substr(0, m.find('@')) + (m.find('@') == std::string::npos ? "" : " " + dt);
    labels.push_back("peft.cpp " + name + d.memory_args);  // e.g. "peft.cpp lora --loss_chunk_tokens 128"
    labels.push_back("pytorch " + name);
  }
  std::vector<std::vector<nlohmann::json>> rounds;
  const int64_t nthreads = at::get_num_threads();
  for (int64_t r = 0; r < d.repeats; ++r) {
    std::vector<nlohmann::json> round;
    for (auto& m : runs) {
      const std::string method = m.substr(0, m.find('@'));
      d.progress("python round " + std::to_string(r + 1) + "/" + std::to_string(d.repeats) + ": " + m);
      round.push_back(run_json_child(d.worker_cmd(m), "the peft.cpp " + m + " step"));
      std::string cmd = quote(py) + " " + quote(script) + " --method " + method + shape_args(d.shape) + " --warmup " +
                        std::to_string(d.warmup) + " --steps " + std::to_string(d.steps) + " --threads " +
                        std::to_string(nthreads) + " --json";
      if (m.find('@') != std::string::npos) cmd += " --dtype " + dt;
      round.push_back(run_json_child(cmd, "the PyTorch " + m + " step"));
    }
    rounds.push_back(round);
  }
  auto rows = summarize(rounds, labels, 0);
  // peft.cpp / PyTorch, per round, per method.
  nlohmann::json ratios;
  for (size_t k = 0; k < runs.size(); ++k) {
    std::vector<double> speed, mem, peak;
    for (auto& round : rounds) {
      speed.push_back(round[2 * k]["tokens_per_s"].get<double>() / round[2 * k + 1]["tokens_per_s"].get<double>());
      mem.push_back(round[2 * k]["step_peak_mib"].get<double>() / round[2 * k + 1]["step_peak_mib"].get<double>());
      peak.push_back(round[2 * k]["peak_rss_mib"].get<double>() / round[2 * k + 1]["peak_rss_mib"].get<double>());
    }
    std::string key = runs[k];
    std::replace(key.begin(), key.end(), '@', '_');
    ratios[key] = {{"speed_peft_over_pytorch", median(speed)},
                   {"step_mem_peft_over_pytorch", median(mem)},
                   {"peak_rss_peft_over_pytorch", median(peak)}};
  }
  os << "\n## peft.cpp vs plain PyTorch in Python (" << rounds[0][1].value("torch", std::string("?"))
     << "), same model and step, " << nthreads << " threads (median of " << d.repeats << " rounds)\n\n";
  std::vector<std::vector<std::string>> t;
  for (auto& r : rows)
    t.push_back({r["name"].get<std::string>(), std::to_string(r["trainable"].get<int64_t>()),
                 fixed(r["peak_rss_mib"].get<double>(), 0), fixed(r["step_peak_mib"].get<double>(), 0),
                 fixed(r["tokens_per_s"].get<double>(), 1)});
  print_table(os, {"implementation", "trainable", "peak MiB", "step MiB", "tokens/s"}, t);
  os << "\npeft.cpp / PyTorch, median of per-round ratios:\n";
  for (auto& kv : ratios.items())
    os << "- " << kv.key() << ": tokens/s " << fixed(kv.value()["speed_peft_over_pytorch"].get<double>(), 2)
       << ", peak RSS " << fixed(kv.value()["peak_rss_peft_over_pytorch"].get<double>(), 2) << ", step memory "
       << fixed(kv.value()["step_mem_peft_over_pytorch"].get<double>(), 2) << "\n";
  return {{"rows", rows}, {"ratios", ratios}, {"runs", rounds}, {"python", py}, {"script", script}};
}

int run_bench(Args& a) {
  a.reject_unknown({"worker", "dist_worker", "ddp_overlap", "ddp_bucket_cap_mb", "medium", "small", "hidden", "layers", "heads", "intermediate", "vocab", "batch", "seq", "warmup",
                    "steps", "repeats", "threads", "methods", "suites", "threads_table", "compare_python", "python",
                    "python_script", "out", "quiet", "dtype", "adapters", "decode_tokens", "quantize", "double_quant",
                    "compute_dtype", "gradient_checkpointing", "loss_chunk_tokens", "profile", "shape", "kv_heads",
                    "rope_theta", "adapter_overrides", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type",
                    "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"});
  if (a.has("worker")) return run_worker(a);
  if (a.has("dist_worker")) return run_dist_worker(a, shape_from_args(a));
  const bool small = a.get_bool("small", false);
  // --shape llama3-8b: one LoRA step (r 16 on q, k, v, o; gradient checkpointing) on a quantized
  // base; a step takes minutes, so one step, one round unless told otherwise.
  const bool big = a.has("shape");
  Driver d;
  d.shape = shape_from_args(a);
  d.warmup = a.get_int("warmup", big ? 0 : 1);
  d.steps = a.get_int("steps", big ? 1 : small ? 2 : 3);
  d.repeats = a.get_int("repeats", big || small ? 1 : 3);
  if (a.get_bool("gradient_checkpointing", big)) d.memory_args += " --gradient_checkpointing true";
  if (a.get_int("loss_chunk_tokens", 0) > 0)
    d.memory_args += " --loss_chunk_tokens " + std::to_string(a.get_int("loss_chunk_tokens", 0));
  if (auto q = quant_config_from_args(a)) {
    d.quant_type = quant::quant_type_name(q->type);
    for (auto& k : quant_keys())
      if (a.has(k)) d.quant_args += " --" + k + " " + quote(a.get(k));
  }
  d.storage_dtype = a.get("dtype", "float32");
  if (a.has("adapter_overrides")) d.adapter_overrides = a.get("adapter_overrides");
  else if (big) d.adapter_overrides = R"({"r": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})";
  d.bucket_mb = a.get_double("ddp_bucket_cap_mb", 25);
  d.exe = self_exe("bench");
  d.quiet = a.get_bool("quiet", false);
  PEFT_CHECK(d.warmup >= 0 && d.steps > 0 && d.repeats > 0, "bench: --steps and --repeats must be > 0");

  std::vector<std::string> suites = split_commas(a.get("suites", "methods"));
  if (a.get_bool("threads_table", false)) suites.push_back("threads");
  if (a.get_bool("compare_python", false)) suites.push_back("python");
  if (std::find(suites.begin(), suites.end(), "all") != suites.end()) suites = {"methods", "threads", "python", "dist", "multi"};
  for (auto& s : suites)
    PEFT_CHECK(s == "methods" || s == "threads" || s == "python" || s == "dist" || s == "multi", "bench: unknown suite '",
               s, "' (methods, threads, python, dist, multi, all)");
  auto has_suite = [&](const char* s) { return std::find(suites.begin(), suites.end(), s) != suites.end(); };

  std::vector<std::string> methods;
  const auto known = method_names();
  std::string mlist = a.get("methods", "");
  if (mlist == "all") {
    methods = {"full"};
    for (auto& m : known) methods.push_back(m);
  } else if (!mlist.empty()) {
    methods = split_commas(mlist);
    if (std::find(methods.begin(), methods.end(), "full") == methods.end()) methods.insert(methods.begin(), "full");
    for (auto& m : methods)
      PEFT_CHECK(m == "full" || std::find(known.begin(), known.end(), m) != known.end(), "bench: unknown method '", m,
                 "'");
  } else {
    for (auto& m : kDefaultMethods)
      if (m == "full" || std::find(known.begin(), known.end(), m) != known.end()) methods.push_back(m);
  }

  // --dtype bfloat16: each method also runs on a bfloat16 base ("lora@bfloat16"), next to its
  // float32 row in every round (full and LoRA when no --methods).
  const torch::Dtype dtype = parse_dtype_name(a.get("dtype", "float32"), "bench: option --dtype", false);
  check_compute_dtype(dtype, torch::kCPU, "bench --dtype");
  if (dtype != torch::kFloat32 || !d.quant_type.empty()) {
    if (mlist.empty()) methods = {"full", "lora"};
    std::vector<std::string> rows;
    for (auto& m : methods) {
      if (!big) rows.push_back(m);  // big: only the quantized rows (below)
      if (dtype != torch::kFloat32 && !big) rows.push_back(m + "@" + dtype_name(dtype));
      // --quantize: each method also on the quantized base (full fine-tuning cannot train one).
      if (!d.quant_type.empty() && m != "full") rows.push_back(m + "@" + d.quant_type);
    }
    methods = rows;
  }
  if (big) {
    // Only the quantized rows: float copies of an 8B model (32 GB in float32, 16 GB in bfloat16)
    // do not fit this machine, so full fine-tuning and the float bases are skipped, not run.
    PEFT_CHECK(!d.quant_type.empty(), "bench --shape ", a.get("shape"),
               ": this shape needs a quantized base (--quantize nf4|fp4|int8); its weights alone are ",
               fixed(2.0 * d.shape.parameters() / (1 << 30), 1), " GiB in bfloat16");
    std::cout << "# --shape " << a.get("shape")
              << ": full fine-tuning and the float-base rows are skipped (they do not fit: the float weights alone "
                 "exceed this machine's memory); only the quantized rows run\n";
  }

  const nlohmann::json cfg = d.shape.config();
  const int64_t params = d.shape.parameters();
  std::ostringstream os;
  const std::string load_start = read_first_line("/proc/loadavg");
  os << "# peft bench: Llama architecture, hidden " << d.shape.hidden << ", " << d.shape.layers << " layers, "
     << d.shape.heads << " heads, intermediate " << d.shape.intermediate << ", vocab " << d.shape.vocab << " ("
     << fixed(params / 1e6, 1) << "M parameters, random weights), batch " << d.shape.batch << " x seq "
     << d.shape.seq << "\n";
  os << "# " << std::thread::hardware_concurrency() << " CPUs (" << cpu_model() << "), torch threads "
     << at::get_num_threads() << ", OMP_WAIT_POLICY=" << (std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "")
     << ", warmup " << d.warmup << " + " << d.steps << " timed steps per run, loadavg at start: " << load_start << "\n";
  std::cout << os.str() << std::flush;

  nlohmann::json report = {{"model_config", cfg},
                           {"parameters", params},
                           {"batch", d.shape.batch},
                           {"seq", d.shape.seq},
                           {"warmup", d.warmup},
                           {"steps", d.steps},
                           {"repeats", d.repeats},
                           {"cpus", std::thread::hardware_concurrency()},
                           {"cpu_model", cpu_model()},
                           {"loadavg_start", load_start}};
  auto emit = [&](const std::function<nlohmann::json(std::ostream&)>& fn, const char* key) {
    std::ostringstream part;
    report[key] = fn(part);
    std::cout << part.str() << std::flush;
  };
  if (has_suite("methods")) emit([&](std::ostream& o) { return methods_suite(d, methods, o); }, "methods");
  if (has_suite("methods") && dtype != torch::kFloat32 && !big)  // big: no float32 rows to compare with
    emit([&](std::ostream& o) { return precision_table(report["methods"], methods, dtype_name(dtype), o); }, "precision");
  if (has_suite("threads")) emit([&](std::ostream& o) { return threads_suite(d, o); }, "threads");
  if (has_suite("python")) emit([&](std::ostream& o) { return python_suite(d, a, o); }, "python");
  if (has_suite("dist")) emit([&](std::ostream& o) { return dist_suite(d, o); }, "dist");
  if (has_suite("multi"))
    emit([&](std::ostream& o) {
      return multi_suite(d.shape, a.get_int("adapters", 8), a.get_int("decode_tokens", 16), d.repeats, o);
    }, "multi");
  report["loadavg_end"] = read_first_line("/proc/loadavg");
  std::cout << "\n# loadavg at end: " << report["loadavg_end"].get<std::string>() << "\n";
  if (a.has("out")) {
    write_json(a.get("out"), report);
    std::cout << "# wrote " << a.get("out") << "\n";
  }
  return 0;
}

PEFT_REGISTER_COMMAND("bench", "training-step memory and speed: full fine-tuning vs PEFT methods", run_bench);

}  // namespace
}  // namespace peft::cli
