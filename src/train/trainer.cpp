#include "peft/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <regex>

#include <signal.h>
#include <unistd.h>
#include <cerrno>
#include <sstream>

#include "peft/dist.h"
#include "peft/error.h"
#include "peft/log.h"
#include "peft/io.h"
#include "peft/metrics.h"
#include "peft/report.h"
#include "io/files.h"

namespace fs = std::filesystem;

namespace peft {

// ---- arguments ------------------------------------------------------------------------------

namespace {
template <class T>
void take(nlohmann::json& j, const char* key, T& out) {
  if (!j.contains(key)) return;
  try {
    out = j[key].get<T>();
  } catch (const std::exception& e) {
    fail("training option '", key, "': expected ", std::is_same<T, std::string>::value ? "a string" : "a number",
         ", got ", j[key].dump());
  }
  j.erase(key);
}
}  // namespace

TrainingArguments TrainingArguments::from_json(nlohmann::json& j) {
  TrainingArguments a;
  take(j, "output_dir", a.output_dir);
  take(j, "learning_rate", a.learning_rate);
  take(j, "max_steps", a.max_steps);
  take(j, "num_train_epochs", a.num_train_epochs);
  take(j, "per_device_train_batch_size", a.per_device_train_batch_size);
  take(j, "per_device_eval_batch_size", a.per_device_eval_batch_size);
  take(j, "gradient_accumulation_steps", a.gradient_accumulation_steps);
  take(j, "warmup_steps", a.warmup_steps);
  take(j, "warmup_ratio", a.warmup_ratio);
  take(j, "lr_scheduler_type", a.lr_scheduler_type);
  take(j, "weight_decay", a.weight_decay);
  take(j, "adam_beta1", a.adam_beta1);
  take(j, "adam_beta2", a.adam_beta2);
  take(j, "adam_epsilon", a.adam_epsilon);
  take(j, "max_grad_norm", a.max_grad_norm);
  take(j, "seed", a.seed);
  take(j, "eval_steps", a.eval_steps);
  take(j, "save_steps", a.save_steps);
  take(j, "logging_steps", a.logging_steps);
  take(j, "save_total_limit", a.save_total_limit);
  take(j, "metric_for_best_model", a.metric_for_best_model);
  take(j, "greater_is_better", a.greater_is_better);
  take(j, "early_stopping_patience", a.early_stopping_patience);
  take(j, "eval_on_start", a.eval_on_start);
  take(j, "progress", a.progress);
  take(j, "ddp_timeout", a.ddp_timeout);
  take(j, "ddp_bucket_cap_mb", a.ddp_bucket_cap_mb);
  take(j, "ddp_backend", a.ddp_backend);
  take(j, "ddp_overlap", a.ddp_overlap);
  PEFT_CHECK(a.learning_rate > 0, "training option 'learning_rate' must be > 0");
  PEFT_CHECK(a.per_device_train_batch_size > 0 && a.per_device_eval_batch_size > 0,
             "training option 'per_device_*_batch_size' must be > 0");
  PEFT_CHECK(a.gradient_accumulation_steps > 0, "training option 'gradient_accumulation_steps' must be > 0");
  PEFT_CHECK(a.max_steps > 0 || a.num_train_epochs > 0, "training: set max_steps or num_train_epochs > 0");
  const std::vector<std::string> sched = {"linear", "cosine", "constant", "constant_with_warmup"};
  PEFT_CHECK(std::find(sched.begin(), sched.end(), a.lr_scheduler_type) != sched.end(),
             "training option 'lr_scheduler_type': '", a.lr_scheduler_type,
             "' is not one of linear, cosine, constant, constant_with_warmup");
  return a;
}

nlohmann::json TrainingArguments::to_json() const {
  return {{"output_dir", output_dir}, {"learning_rate", learning_rate}, {"max_steps", max_steps},
          {"num_train_epochs", num_train_epochs}, {"per_device_train_batch_size", per_device_train_batch_size},
          {"per_device_eval_batch_size", per_device_eval_batch_size},
          {"gradient_accumulation_steps", gradient_accumulation_steps}, {"warmup_steps", warmup_steps},
          {"warmup_ratio", warmup_ratio}, {"lr_scheduler_type", lr_scheduler_type}, {"weight_decay", weight_decay},
          {"adam_beta1", adam_beta1}, {"adam_beta2", adam_beta2}, {"adam_epsilon", adam_epsilon},
          {"max_grad_norm", max_grad_norm}, {"seed", seed}, {"eval_steps", eval_steps}, {"save_steps", save_steps},
          {"logging_steps", logging_steps}, {"save_total_limit", save_total_limit},
          {"metric_for_best_model", metric_for_best_model}, {"greater_is_better", greater_is_better},
          {"early_stopping_patience", early_stopping_patience}, {"eval_on_start", eval_on_start},
          {"progress", progress}, {"ddp_timeout", ddp_timeout}, {"ddp_bucket_cap_mb", ddp_bucket_cap_mb},
          {"ddp_backend", ddp_backend}, {"ddp_overlap", ddp_overlap}};
}

std::vector<std::string> TrainingArguments::keys() {
  std::vector<std::string> k;
  const nlohmann::json all = TrainingArguments().to_json();
  for (auto& kv : all.items()) k.push_back(kv.key());
  return k;
}

int64_t total_training_steps(const TrainingArguments& a, int64_t train_size, int64_t world_size) {
  if (a.max_steps > 0) return a.max_steps;
  const int64_t global = a.per_device_train_batch_size * std::max<int64_t>(1, world_size);
  const int64_t per_epoch = (train_size + global - 1) / global;
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(a.num_train_epochs * static_cast<double>(per_epoch) /
                                                             static_cast<double>(a.gradient_accumulation_steps))));
}

double lr_lambda(const std::string& type, int64_t step, int64_t warmup, int64_t total) {
  if (step < warmup && type != "constant") return double(step) / double(std::max<int64_t>(1, warmup));
  if (type == "constant" || type == "constant_with_warmup") return 1.0;
  double progress = double(step - warmup) / double(std::max<int64_t>(1, total - warmup));
  if (type == "cosine") return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
  return std::max(0.0, double(total - step) / double(std::max<int64_t>(1, total - warmup)));
}

// ---- evaluation -----------------------------------------------------------------------------

static ModelInput model_input(const Batch& b) {
  ModelInput in;
  in.input_ids = b.input_ids;
  in.attention_mask = b.attention_mask;
  in.labels = b.labels;
  if (b.token_type_ids.defined()) in.token_type_ids = b.token_type_ids;
  return in;
}

double loss_units(const Dataset& ds, const Batch& b) {
  if (b.size() == 0) return 0;
  if (ds.is_causal_lm()) return (b.labels.slice(1, 1) != -100).sum().item<double>();
  if (ds.kind == DataKind::Seq2Seq) return (b.labels != -100).sum().item<double>();
  return static_cast<double>(b.size());
}

nlohmann::json evaluate_dataset(const std::function<ModelOutput(const ModelInput&)>& forward, const Dataset& ds,
                                int64_t batch_size, dist::Group* group) {
  PEFT_CHECK(batch_size > 0, "batch size must be > 0, got ", batch_size);
  torch::NoGradGuard ng;
  nlohmann::json r;
  const size_t rank = group ? static_cast<size_t>(group->rank()) : 0;
  const size_t world = group ? static_cast<size_t>(group->world_size()) : 1;
  double loss_sum = 0, weight = 0;
  // (example index, prediction, gold): gathered over the ranks and put back in dataset order.
  std::vector<std::tuple<int64_t, double, double>> rows;
  const bool tokens = ds.is_causal_lm() || ds.kind == DataKind::Seq2Seq;
  std::vector<size_t> mine;
  for (size_t i = rank; i < ds.size(); i += world) mine.push_back(i);
  for (size_t s = 0; s < mine.size(); s += static_cast<size_t>(batch_size)) {
    std::vector<size_t> idx(mine.begin() + static_cast<std::ptrdiff_t>(s),
                            mine.begin() + static_cast<std::ptrdiff_t>(std::min(mine.size(), s + static_cast<size_t>(batch_size))));
    Batch b = collate(ds, idx);
    auto out = forward(model_input(b));
    // Token-weighted mean over the whole set (a batch mean weights short batches too much).
    // Causal LM labels are shifted inside the model; seq2seq labels are not (every label
    // position is predicted from the decoder input before it).
    const double n = loss_units(ds, b);
    loss_sum += out.loss.item<double>() * n;
    weight += n;
    if (tokens) continue;
    auto p = ds.regression ? out.logits.reshape({-1}).to(torch::kFloat64) : out.logits.argmax(-1).to(torch::kFloat64);
    auto l = b.labels.to(torch::kFloat64);
    for (int64_t i = 0; i < p.size(0); ++i)
      rows.emplace_back(static_cast<int64_t>(idx[static_cast<size_t>(i)]), p[i].item<double>(), l[i].item<double>());
  }
  if (group) {
    auto sums = torch::tensor({loss_sum, weight}, torch::kFloat64);
    group->all_reduce_sum({sums}, "evaluation loss");
    loss_sum = sums[0].item<double>();
    weight = sums[1].item<double>();
    if (!tokens) {
      nlohmann::json j = nlohmann::json::array();
      for (auto& [i, p, g] : rows) j.push_back({i, p, g});
      rows.clear();
      for (auto& part : group->all_gather_strings(j.dump(), "evaluation predictions"))
        for (auto& e : nlohmann::json::parse(part))
          rows.emplace_back(e[0].get<int64_t>(), e[1].get<double>(), e[2].get<double>());
      std::sort(rows.begin(), rows.end());
    }
  }
  PEFT_CHECK(weight > 0, "evaluation: the dataset has no examples with labels");
  double loss = loss_sum / weight;
  r["eval_loss"] = loss;
  if (tokens) r["eval_perplexity"] = perplexity(loss);
  if (!rows.empty() && !ds.regression) {
    std::vector<int64_t> pred, gold;
    for (auto& [i, p, g] : rows) {
      pred.push_back(static_cast<int64_t>(p));
      gold.push_back(static_cast<int64_t>(g));
    }
    r["eval_accuracy"] = accuracy(pred, gold);
    r["eval_f1"] = ds.label_names.size() == 2 ? f1_score(pred, gold, "binary") : f1_score(pred, gold, "macro");
    r["eval_mcc"] = matthews_corrcoef(pred, gold);
  }
  if (ds.regression) r["eval_mse"] = loss;  // the loss of a regression head is the MSE
  if (!rows.empty() && ds.regression) {
    std::vector<double> xs, ys;
    for (auto& [i, p, g] : rows) {
      xs.push_back(p);
      ys.push_back(g);
    }
    r["eval_pearson"] = pearson(xs, ys);
    r["eval_spearman"] = spearman(xs, ys);
  }
  return r;
}

// ---- trainer --------------------------------------------------------------------------------

Trainer::Trainer(PeftModelPtr model, TrainingArguments args, const Dataset& train, const Dataset* eval,
                 nlohmann::json run_config)
    : pm_(std::move(model)), args_(std::move(args)), train_(train), eval_(eval), run_config_(std::move(run_config)) {
  PEFT_CHECK(!args_.output_dir.empty(), "training: output_dir is required");
  PEFT_CHECK(train_.size() > 0, "training: the training set is empty (", train_.source, ")");
  total_steps_ = total_training_steps(args_, static_cast<int64_t>(train_.size()));
}

void Trainer::set_process_group(std::shared_ptr<dist::Group> group) {
  group_ = std::move(group);
  total_steps_ = total_training_steps(args_, static_cast<int64_t>(train_.size()), group_ ? group_->world_size() : 1);
}

nlohmann::json Trainer::evaluate() {
  PEFT_CHECK(eval_ && eval_->size() > 0, "evaluation: no eval data");
  bool was_training = pm_->is_training();
  pm_->eval();
  auto pm = pm_;
  auto r = evaluate_dataset([pm](const ModelInput& in) { return pm->forward(in); }, *eval_,
                            args_.per_device_eval_batch_size, group_.get());
  pm_->train(was_training);
  return r;
}

static std::string ckpt_name(int64_t step) { return "checkpoint-" + std::to_string(step); }

static std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  if (!fs::is_directory(dir)) return out;
  std::regex re("checkpoint-(\\d+)");
  for (auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    std::string n = e.path().filename().string();
    if (e.is_directory() && std::regex_match(n, m, re) && fs::exists(e.path() / "trainer_state.json"))
      out.emplace_back(std::stoll(m[1].str()), e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// What an interrupted earlier run may have left: `.checkpoint-N.tmp` folders (a checkpoint being
// written), write_file_atomic's `NAME.tmp.PID` files, and `.checkpoint-N.old` (a checkpoint
// being replaced): the last one is put back when its replacement never got published. Only
// rank 0 cleans (it is the only writer), and a `NAME.tmp.PID` whose process is still alive is
// someone's write in progress, not a leftover.
static bool process_alive(const std::string& pid_text) {
  try {
    const long pid = std::stol(pid_text);
    if (pid <= 0 || pid == static_cast<long>(::getpid())) return false;  // ours: nothing in flight here
    return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
  } catch (const std::exception&) {
    return false;
  }
}

static void clean_leftovers(const std::string& dir) {
  if (!fs::is_directory(dir)) return;
  static const std::regex tmp_dir(R"(\.checkpoint-\d+\.tmp)"), old_dir(R"(\.(checkpoint-\d+)\.old)"),
      tmp_file(R"(.+\.tmp\.(\d+))");
  std::vector<fs::path> remove;
  std::vector<std::pair<fs::path, fs::path>> restore;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    std::string n = it->path().filename().string();
    std::smatch m;
    if (it->is_directory() && std::regex_match(n, tmp_dir)) {
      remove.push_back(it->path());
      it.disable_recursion_pending();
    } else if (it->is_directory() && std::regex_match(n, m, old_dir)) {
      fs::path live = it->path().parent_path() / m[1].str();
      it.disable_recursion_pending();
      if (fs::exists(live)) remove.push_back(it->path());
      else restore.emplace_back(it->path(), live);
    } else if (it->is_regular_file() && std::regex_match(n, m, tmp_file) && !process_alive(m[1].str())) {
      remove.push_back(it->path());
    }
  }
  for (auto& p : remove) {
    log_info("removing ", p.string(), " (left by an interrupted run)");
    fs::remove_all(p);
  }
  for (auto& [from, to] : restore) {
    log_info("restoring ", to.string(), " from ", from.string(), " (its replacement was never completed)");
    fs::rename(from, to);
  }
}

void Trainer::save_checkpoint(int64_t step, const nlohmann::json& data_state, const nlohmann::json& trainer_state) {
  // Everything goes into a temporary folder first; one rename publishes it, so a crash (even
  // kill -9) never leaves a half-written checkpoint under its final name. A failed write (disk
  // full, quota, EIO) removes the temporary folder and reports the file; earlier checkpoints
  // and the final adapter of an earlier run stay as they were.
  fs::path final_dir = fs::path(args_.output_dir) / ckpt_name(step);
  fs::path tmp = fs::path(args_.output_dir) / ("." + ckpt_name(step) + ".tmp");
  try {
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    pm_->save_adapter(tmp.string(), saved_adapter());
    {
      // LibTorch's file writer finishes the zip archive in its destructor, where a failed write
      // cannot be reported (std::terminate); serialising to memory first and writing through
      // write_file_atomic turns a full disk into an ordinary error naming the file.
      torch::serialize::OutputArchive ar;
      opt_->save(ar);
      std::ostringstream bytes;
      ar.save_to(bytes);
      write_file_atomic((tmp / "optimizer.pt").string(), bytes.str());
    }
    auto gen = at::detail::getDefaultCPUGenerator();
    torch::Tensor rng;
    {
      std::lock_guard<std::mutex> lock(gen.mutex());
      rng = gen.get_state();
    }
    save_safetensors((tmp / "rng_state.safetensors").string(), {{"cpu", rng}});
    nlohmann::json st = trainer_state;
    st["global_step"] = step;
    st["data"] = data_state;
    write_json((tmp / "trainer_state.json").string(), st);
    write_json((tmp / "run_config.json").string(), run_config_);
    // A checkpoint of this step exists only when a resumed run re-saves it: move it aside first
    // so that a failure between the two renames still leaves one complete copy.
    fs::path old = fs::path(args_.output_dir) / ("." + ckpt_name(step) + ".old");
    fs::remove_all(old);
    if (fs::exists(final_dir)) fs::rename(final_dir, old);
    fs::rename(tmp, final_dir);
    fs::remove_all(old);
    sync_directory(args_.output_dir);
  } catch (const std::exception& e) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fail("saving checkpoint ", final_dir.string(), " failed: ", e.what(),
         " (earlier checkpoints are untouched; --resume continues from the last complete one)");
  }
}

int64_t Trainer::restore_checkpoint(const std::string& dir, nlohmann::json* data_state, nlohmann::json* trainer_state) {
  auto name = saved_adapter();  // the adapter save_checkpoint wrote
  auto w = join_path(dir, "adapter_model.safetensors");
  pm_->load_adapter_state_dict(name, load_safetensors(w), w);
  torch::serialize::InputArchive ar;
  ar.load_from(join_path(dir, "optimizer.pt"));
  opt_->load(ar);
  auto rng = load_safetensors(join_path(dir, "rng_state.safetensors")).at("cpu");
  auto gen = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(rng.clone());
  }
  *trainer_state = read_json(join_path(dir, "trainer_state.json"));
  *data_state = (*trainer_state)["data"];
  return (*trainer_state)["global_step"].get<int64_t>();
}

void Trainer::prune_checkpoints(const std::string& best) {
  if (args_.save_total_limit <= 0) return;
  auto all = list_checkpoints(args_.output_dir);
  int64_t keep = args_.save_total_limit;
  int64_t n = static_cast<int64_t>(all.size());
  for (int64_t i = 0; i < n - keep; ++i)
    if (fs::path(all[i].second).filename() != fs::path(best).filename()) fs::remove_all(all[i].second);
}

namespace {
// Data-parallel ranks draw dropout masks for batches of their own shapes, so their generators
// drift apart; anything random after the gradient sum (a tuner's step hooks) must still agree.
// Every optimizer step therefore reseeds the CPU generator from (seed, step) on every rank.
void align_rng(int64_t seed, int64_t step) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_current_seed(static_cast<uint64_t>(seed) ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(step + 1)));
}
}  // namespace

// ---- the training run -----------------------------------------------------------------------
// Trainer::train is the list of the run's steps; Trainer::Run holds what lives for one run
// (data order, optimizer schedule, logs, checkpoint bookkeeping) and does each step.

struct Trainer::Run {
  /// What one optimizer step measured (after the data-parallel sum: the global batch's).
  struct StepStats {
    double loss = 0;
    int64_t tokens = 0;
  };

  Trainer& t;
  dist::Group* g;
  const bool main;  // rank 0 (or the only process) writes every file
  DataLoader loader;
  const std::string log_path;
  int64_t step = 0;
  int64_t split = 0;  // where a tuner's second run starts (total_steps_: one run)
  nlohmann::json tstate = {{"best_metric", nullptr}, {"best_checkpoint", ""}, {"bad_evals", 0}};
  std::unique_ptr<JsonlLogger> log;
  std::unique_ptr<ProgressBar> bar;
  TrainResult result;
  double window_loss = 0;
  int64_t window_n = 0;
  std::vector<torch::Tensor> params;
  const bool has_eval;
  std::unique_ptr<dist::GradBuckets> buckets;
  double reduce_seconds = 0, buckets_in_backward = 0;
  // Throughput of the optimizer steps alone (evaluation and checkpoints excluded), for the
  // summary record at the end (as Trainer's train_runtime / train_samples_per_second).
  double step_seconds = 0;
  int64_t run_tokens = 0, run_steps = 0;
  std::vector<Batch> micro;

  explicit Run(Trainer& tr)
      : t(tr),
        g(tr.group_.get()),
        main(!g || g->is_main()),
        loader(tr.train_, tr.args_.per_device_train_batch_size, static_cast<uint64_t>(tr.args_.seed)),
        log_path(join_path(tr.args_.output_dir, "metrics.jsonl")),
        has_eval(tr.eval_ && tr.eval_->size() > 0),
        micro(static_cast<size_t>(tr.args_.gradient_accumulation_steps)) {
    if (main) fs::create_directories(t.args_.output_dir);
    if (g) loader.shard(g->rank(), g->world_size());
    torch::manual_seed(static_cast<uint64_t>(t.args_.seed));
  }

  /// Data-driven masks (FISH, Child-Tuning_D) are chosen before the first step from training
  /// batches of their own loader; a resumed run reads the mask from its checkpoint instead.
  /// (Every rank computes the same mask from the same batches.)
  void calibrate_tuners() {
    if (!t.pm_->needs_calibration()) return;
    DataLoader cal(t.train_, t.args_.per_device_train_batch_size, static_cast<uint64_t>(t.args_.seed) + 1);
    t.pm_->calibrate([&] { return t.pm_->forward(model_input(cal.next_batch())).loss; });
  }

  /// AdamW with weight decay on matrices only (not on biases, norms or scaling vectors). A tuner
  /// that trains twice (LT-SFT, Ansell et al. 2022, sec. 3.1: phase 2 is a second fine-tuning
  /// run) gets a learning-rate schedule per run, as two separate runs would.
  void build_optimizer() {
    const auto& a = t.args_;
    std::vector<torch::Tensor> decay, no_decay;
    for (auto& [name, p] : t.pm_->named_trainable_parameters())
      (p.dim() < 2 || name.find("bias") != std::string::npos || name.find("norm") != std::string::npos ? no_decay : decay)
          .push_back(p);
    PEFT_CHECK(!decay.empty() || !no_decay.empty(), "training: the model has no trainable parameters");
    auto opts = torch::optim::AdamWOptions(a.learning_rate).betas({a.adam_beta1, a.adam_beta2}).eps(a.adam_epsilon);
    std::vector<torch::optim::OptimizerParamGroup> groups;
    if (!decay.empty())
      groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(opts.weight_decay(a.weight_decay)));
    if (!no_decay.empty())
      groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(opts.weight_decay(0.0)));
    t.opt_ = std::make_unique<torch::optim::AdamW>(groups, opts);
    t.pm_->take_optimizer_reset();  // a request left by steps taken outside this trainer does not apply
    const int64_t split_at = t.pm_->second_run_start();
    split = split_at > 0 && split_at < t.total_steps_ ? split_at : t.total_steps_;
  }

  /// Learning rate at step s: warmup and decay over [0, split) and again over [split, total).
  double lr_at(int64_t s) const {
    const auto& a = t.args_;
    const int64_t begin = s < split ? 0 : split, len = s < split ? split : t.total_steps_ - split;
    const int64_t warmup = a.warmup_steps > 0 ? a.warmup_steps : static_cast<int64_t>(std::ceil(a.warmup_ratio * len));
    return a.learning_rate * lr_lambda(a.lr_scheduler_type, s - begin, warmup, len);
  }

  /// Rank 0 picks the newest checkpoint; every rank loads that one (the output directory must be
  /// shared, or copied to every node, for a multi-node resume). The log keeps exactly the
  /// records up to the checkpoint, so curves have no duplicates.
  void resume_from_checkpoint() {
    std::string chosen;
    if (main) {
      auto all = list_checkpoints(t.args_.output_dir);
      PEFT_CHECK(!all.empty(), "--resume: no checkpoint-N folder with trainer_state.json in ", t.args_.output_dir);
      chosen = all.back().second;
    }
    if (g) chosen = g->broadcast_string(chosen, 0, "the checkpoint to resume from");
    PEFT_CHECK(fs::exists(fs::path(chosen) / "trainer_state.json"), "--resume: rank ", g ? g->rank() : 0,
               " cannot read ", chosen, " (rank 0 resumes from it): a multi-node run needs the output directory "
               "on a shared file system, or copied to every node");
    nlohmann::json dstate;
    step = t.restore_checkpoint(chosen, &dstate, &tstate);
    const int64_t was_world = dstate.value("world_size", int64_t(1)), was_batch = dstate.value("batch_size", int64_t(0));
    loader.restore(dstate);
    if (!main) return;
    if (was_world != (g ? g->world_size() : 1) || was_batch != t.args_.per_device_train_batch_size)
      log_info("resume: the checkpoint was written with ", was_world, " rank(s) x batch ", was_batch,
               ", this run has ", g ? g->world_size() : 1, " x ", t.args_.per_device_train_batch_size,
               "; the data continues at example ", loader.position(), " of epoch ", loader.epoch(),
               " (nothing skipped or repeated), with the new global batch");
    std::vector<nlohmann::json> kept;
    if (file_exists(log_path))
      for (auto& r : read_jsonl(log_path))
        if (r.value("step", int64_t(0)) <= step) kept.push_back(r);
    std::string text;
    for (auto& r : kept) text += r.dump() + "\n";
    write_file_atomic(log_path, text);
    log_info("resumed from ", chosen, " (step ", step, ")");
  }

  /// Temporaries of an interrupted run removed; a fresh run starts a fresh log.
  void clean_output(bool resume) {
    if (!main) return;
    clean_leftovers(t.args_.output_dir);
    if (!resume && file_exists(log_path)) fs::remove(log_path);
  }

  /// run_config.json, the metrics log, the progress bar; data-parallel: the gradient buckets and
  /// identical starting points, whatever each rank initialised.
  void open_run() {
    if (main) write_json(join_path(t.args_.output_dir, "run_config.json"), t.run_config_);
    if (main) log = std::make_unique<JsonlLogger>(log_path);
    ProgressOptions popt;
    if (!t.args_.progress || !main) popt.every = 1 << 30;
    bar = std::make_unique<ProgressBar>(t.total_steps_, popt);
    params = t.pm_->trainable_parameters();
    if (g) {
      buckets = std::make_unique<dist::GradBuckets>(t.group_, params, t.args_.ddp_bucket_cap_mb, t.args_.ddp_overlap);
      buckets->broadcast_parameters();
    }
  }

  void log_record(const nlohmann::json& r) {
    if (log) log->log(r);
  }

  std::string last_checkpoint_hint() const {
    auto all = list_checkpoints(t.args_.output_dir);
    return all.empty() ? std::string("No checkpoint was written yet.")
                       : "The last good checkpoint is " + all.back().second + " (resume with --resume).";
  }
  [[noreturn]] void fail_on_loss(double loss, const std::string& hint) const {
    fail("step ", step + 1, ": the loss is ", loss, " (NaN/Inf); training stopped. ", hint,
         " Try a lower learning_rate or max_grad_norm.");
  }

  /// Forward and backward over the step's micro-batches (gradient accumulation). Data-parallel:
  /// rank r's micro-batch k is a mean over its n_rk loss units (tokens or examples); scaling it by
  /// n_rk / sum_r n_rk before the gradient sum gives exactly the gradient of the mean over the
  /// global batch, as one process with the whole batch computes.
  StepStats accumulate_gradients() {
    StepStats s;
    const double accum = static_cast<double>(micro.size());
    std::vector<double> units(micro.size(), 1.0), total(micro.size(), 1.0);
    for (auto& b : micro) b = loader.next_batch();
    if (g) {
      for (size_t k = 0; k < micro.size(); ++k) units[k] = loss_units(t.train_, micro[k]);
      auto u = torch::tensor(units, torch::kFloat64);
      g->all_reduce_sum({u}, "loss weights");
      for (size_t k = 0; k < micro.size(); ++k) total[k] = u[static_cast<int64_t>(k)].item<double>();
    }
    for (size_t k = 0; k < micro.size(); ++k) {
      const Batch& b = micro[k];
      if (g && (b.size() == 0 || units[k] == 0)) continue;  // nothing of this micro-batch here
      auto out = t.pm_->forward(model_input(b));
      const double lv = out.loss.item<double>();
      if (!g && !std::isfinite(lv)) fail_on_loss(lv, last_checkpoint_hint());
      if (buckets && k + 1 == micro.size()) buckets->arm();  // the step's last backward starts the sums
      if (!g) {
        (out.loss / accum).backward();
        s.loss += lv / accum;
      } else {
        const double w = units[k] / total[k];
        (out.loss * (w / accum)).backward();
        s.loss += w * lv / accum;
      }
      s.tokens += b.num_tokens;
    }
    return s;
  }

  /// Data-parallel: one bucketed all-reduce of the trainable gradients (and the step's loss and
  /// tokens); a NaN/Inf loss is the same sum on every rank, so all stop together.
  void reduce_gradients(StepStats& s) {
    if (!g) return;
    auto stats = torch::tensor({s.loss, static_cast<double>(s.tokens)}, torch::kFloat64);
    buckets->reduce(stats);
    reduce_seconds += buckets->last_seconds();
    buckets_in_backward += static_cast<double>(buckets->last_started_in_backward());
    s.loss = stats[0].item<double>();
    s.tokens = static_cast<int64_t>(stats[1].item<double>());
    if (!std::isfinite(s.loss)) fail_on_loss(s.loss, main ? last_checkpoint_hint() : std::string());
    align_rng(t.args_.seed, step);
  }

  /// The tuners' step hooks around clipping and the AdamW step; returns the gradient norm
  /// (after the sum every rank holds the global gradient: the norm clipped is the global one).
  double optimizer_step(double lr) {
    for (auto& pg : t.opt_->param_groups()) static_cast<torch::optim::AdamWOptions&>(pg.options()).lr(lr);
    t.pm_->before_step(step);
    double gnorm = t.args_.max_grad_norm > 0 ? torch::nn::utils::clip_grad_norm_(params, t.args_.max_grad_norm) : 0.0;
    t.opt_->step();
    t.pm_->after_step(step);
    t.opt_->zero_grad();
    if (t.pm_->take_optimizer_reset()) t.opt_->state().clear();  // a tuner's phase boundary (LT-SFT)
    ++step;
    return gnorm;
  }

  /// The progress line, and a metrics record every logging_steps (the window's mean loss).
  void log_step(const StepStats& s, double lr, double gnorm, double seconds) {
    step_seconds += seconds;
    run_tokens += s.tokens;
    ++run_steps;
    window_loss += s.loss;
    ++window_n;
    if (main) bar->update(step, s.loss, s.tokens, str_cat("lr ", lr));
    if (step % std::max<int64_t>(1, t.args_.logging_steps) != 0 && step != t.total_steps_) return;
    result.train_loss = window_loss / window_n;
    nlohmann::json rec = {{"step", step}, {"loss", result.train_loss}, {"lr", lr}, {"grad_norm", gnorm},
                          {"epoch", double(loader.epoch()) + double(loader.position()) / double(t.train_.size())}};
    if (g) {
      // Means per step over the window: the time spent in the sum after backward, and the share
      // of the buckets whose sum backward had started.
      rec["allreduce_s"] = reduce_seconds / window_n;
      rec["allreduce_overlapped"] = buckets_in_backward / window_n / static_cast<double>(buckets->num_buckets());
    }
    reduce_seconds = 0;
    buckets_in_backward = 0;
    log_record(rec);
    window_loss = 0;
    window_n = 0;
  }

  /// Every rank must hold the same adapter; checked whenever rank 0 is about to save it.
  void check_in_sync() {
    if (!g) return;
    auto hashes = g->all_gather_strings(std::to_string(dist::tensor_hash(params)), "parameter check");
    for (size_t r = 1; r < hashes.size(); ++r)
      PEFT_CHECK(hashes[r] == hashes[0], "distributed: at step ", step, " the trainable parameters of rank ", r,
                 " differ from rank 0's (a tuner drew random numbers or read data differently on the ranks)");
  }
  void save() {
    check_in_sync();
    if (!main) return;
    t.save_checkpoint(step, loader.state(), tstate);
    t.prune_checkpoints(tstate["best_checkpoint"].get<std::string>());
  }
  nlohmann::json run_eval() {
    nlohmann::json ev = t.evaluate();
    if (t.eval_hook_) {
      bool was_training = t.pm_->is_training();
      t.pm_->eval();
      const nlohmann::json extra = t.eval_hook_();  // (items() of a temporary would dangle)
      for (auto& kv : extra.items()) ev[kv.key()] = kv.value();
      t.pm_->train(was_training);
    }
    // Rank 0's record (it holds the gathered generation metrics) decides for every rank.
    if (g) ev = nlohmann::json::parse(g->broadcast_string(ev.dump(), 0, "evaluation record"));
    return ev;
  }
  /// The curve's starting point (eval_on_start).
  void eval_at_start() {
    if (!t.args_.eval_on_start || !has_eval || step != 0) return;
    auto ev = run_eval();
    ev["step"] = 0;
    log_record(ev);
  }
  void eval_and_save(bool do_save) {
    if (has_eval) {
      nlohmann::json ev = run_eval();
      ev["step"] = step;
      log_record(ev);
      result.final_eval = ev;
      if (ev.contains(t.args_.metric_for_best_model)) {
        double m = ev[t.args_.metric_for_best_model].get<double>();
        bool better = tstate["best_metric"].is_null() ||
                      (t.args_.greater_is_better ? m > tstate["best_metric"].get<double>() : m < tstate["best_metric"].get<double>());
        if (better) {
          tstate["best_metric"] = m;
          tstate["best_checkpoint"] = ckpt_name(step);
          tstate["bad_evals"] = 0;
        } else {
          tstate["bad_evals"] = tstate["bad_evals"].get<int64_t>() + 1;
        }
      }
    }
    if (do_save) save();
  }
  /// Evaluation and checkpoints due at this step (the last step's come in finish()); true when
  /// early stopping ends the run.
  bool evaluate_save_or_stop() {
    const auto& a = t.args_;
    bool eval_now = a.eval_steps > 0 && step % a.eval_steps == 0;
    bool save_now = a.save_steps > 0 && step % a.save_steps == 0;
    if (!(eval_now || save_now) || step >= t.total_steps_) return false;
    if (eval_now) eval_and_save(save_now);
    else save();
    if (a.early_stopping_patience <= 0 || tstate["bad_evals"].get<int64_t>() < a.early_stopping_patience) return false;
    if (main)
      log_info("\nearly stopping at step ", step, ": ", a.metric_for_best_model, " did not improve in ",
               a.early_stopping_patience, " evaluations");
    result.stopped_early = true;
    return true;
  }

  /// The summary record, the final evaluation and checkpoint, the adapter and the report.
  TrainResult finish() {
    if (main) bar->finish();
    const auto rep = t.pm_->trainable_report();
    nlohmann::json summary = {{"step", step},
                              {"train_steps_run", run_steps},
                              {"train_step_seconds", step_seconds},
                              {"train_tokens", run_tokens},
                              {"train_tokens_per_second", step_seconds > 0 ? run_tokens / step_seconds : 0.0},
                              {"trainable_params", rep.trainable},
                              {"all_params", rep.total}};
    if (g) summary["world_size"] = g->world_size();
    log_record(summary);
    eval_and_save(/*do_save=*/true);
    if (main) {
      t.pm_->save_adapter(t.args_.output_dir, t.saved_adapter());
      write_training_report(t.args_.output_dir, read_jsonl(log_path), "peft.cpp training report");
    }
    if (g) g->barrier("end of training");  // no rank leaves (and closes the store) before rank 0 is done
    result.steps = step;
    result.best_checkpoint = tstate["best_checkpoint"].get<std::string>();
    t.pm_->eval();
    return result;
  }
};

TrainResult Trainer::train(bool resume) {
  Run run(*this);
  if (!resume) run.calibrate_tuners();
  pm_->train();
  run.build_optimizer();
  run.clean_output(resume);
  if (resume) run.resume_from_checkpoint();
  run.open_run();
  run.eval_at_start();
  while (run.step < total_steps_) {
    const auto t0 = std::chrono::steady_clock::now();
    auto stats = run.accumulate_gradients();
    run.reduce_gradients(stats);
    const double lr = run.lr_at(run.step);
    const double gnorm = run.optimizer_step(lr);
    run.log_step(stats, lr, gnorm, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (run.evaluate_save_or_stop()) break;
  }
  return run.finish();
}

}  // namespace peft
