#include "peft/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <regex>
#include <sstream>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/metrics.h"
#include "peft/report.h"
#include "io/files.h"
#include "train/optimizer_reset.h"

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
          {"progress", progress}};
}

std::vector<std::string> TrainingArguments::keys() {
  std::vector<std::string> k;
  const nlohmann::json all = TrainingArguments().to_json();
  for (auto& kv : all.items()) k.push_back(kv.key());
  return k;
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

nlohmann::json evaluate_dataset(const std::function<ModelOutput(const ModelInput&)>& forward, const Dataset& ds,
                                int64_t batch_size) {
  torch::NoGradGuard ng;
  nlohmann::json r;
  double loss_sum = 0, weight = 0;
  std::vector<int64_t> pred, gold;
  std::vector<double> xs, ys;
  for (auto& b : sequential_batches(ds, batch_size)) {
    auto out = forward(model_input(b));
    if (ds.is_causal_lm() || ds.kind == DataKind::Seq2Seq) {
      // Token-weighted mean over the whole set (a batch mean weights short batches too much).
      // Causal LM labels are shifted inside the model; seq2seq labels are not (every label
      // position is predicted from the decoder input before it).
      auto counted = ds.is_causal_lm() ? b.labels.slice(1, 1) : b.labels;
      auto n = (counted != -100).sum().item<double>();
      loss_sum += out.loss.item<double>() * n;
      weight += n;
    } else {
      loss_sum += out.loss.item<double>() * b.size();
      weight += b.size();
      if (ds.regression) {
        auto p = out.logits.reshape({-1}).to(torch::kFloat64);
        auto l = b.labels.to(torch::kFloat64);
        for (int64_t i = 0; i < p.size(0); ++i) {
          xs.push_back(p[i].item<double>());
          ys.push_back(l[i].item<double>());
        }
      } else {
        auto p = out.logits.argmax(-1);
        for (int64_t i = 0; i < p.size(0); ++i) {
          pred.push_back(p[i].item<int64_t>());
          gold.push_back(b.labels[i].item<int64_t>());
        }
      }
    }
  }
  PEFT_CHECK(weight > 0, "evaluation: the dataset has no examples with labels");
  double loss = loss_sum / weight;
  r["eval_loss"] = loss;
  if (ds.is_causal_lm() || ds.kind == DataKind::Seq2Seq) r["eval_perplexity"] = perplexity(loss);
  if (!pred.empty()) {
    r["eval_accuracy"] = accuracy(pred, gold);
    r["eval_f1"] = ds.label_names.size() == 2 ? f1_score(pred, gold, "binary") : f1_score(pred, gold, "macro");
    r["eval_mcc"] = matthews_corrcoef(pred, gold);
  }
  if (!xs.empty()) {
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
  int64_t per_epoch = (int64_t(train_.size()) + args_.per_device_train_batch_size - 1) / args_.per_device_train_batch_size;
  total_steps_ = args_.max_steps > 0
                     ? args_.max_steps
                     : std::max<int64_t>(1, int64_t(std::ceil(args_.num_train_epochs * per_epoch /
                                                              double(args_.gradient_accumulation_steps))));
}

nlohmann::json Trainer::evaluate() {
  PEFT_CHECK(eval_ && eval_->size() > 0, "evaluation: no eval data");
  bool was_training = pm_->is_training();
  pm_->eval();
  auto pm = pm_;
  auto r = evaluate_dataset([pm](const ModelInput& in) { return pm->forward(in); }, *eval_,
                            args_.per_device_eval_batch_size);
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
// being replaced): the last one is put back when its replacement never got published.
static void clean_leftovers(const std::string& dir) {
  if (!fs::is_directory(dir)) return;
  static const std::regex tmp_dir(R"(\.checkpoint-\d+\.tmp)"), old_dir(R"(\.(checkpoint-\d+)\.old)"),
      tmp_file(R"(.+\.tmp\.\d+)");
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
    } else if (it->is_regular_file() && std::regex_match(n, tmp_file)) {
      remove.push_back(it->path());
    }
  }
  for (auto& p : remove) {
    std::cerr << "removing " << p.string() << " (left by an interrupted run)\n";
    fs::remove_all(p);
  }
  for (auto& [from, to] : restore) {
    std::cerr << "restoring " << to.string() << " from " << from.string() << " (its replacement was never completed)\n";
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
    pm_->save_adapter(tmp.string());
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
  auto name = pm_->active_adapters().at(0);
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

TrainResult Trainer::train(bool resume) {
  fs::create_directories(args_.output_dir);
  torch::manual_seed(static_cast<uint64_t>(args_.seed));
  // Data-driven masks (FISH, Child-Tuning_D) are chosen before the first step from training
  // batches of their own loader; a resumed run reads the mask from its checkpoint instead.
  if (!resume && pm_->needs_calibration()) {
    DataLoader cal(train_, args_.per_device_train_batch_size, static_cast<uint64_t>(args_.seed) + 1);
    pm_->calibrate([&] { return pm_->forward(model_input(cal.next_batch())).loss; });
  }
  pm_->train();

  // AdamW with weight decay on matrices only (not on biases, norms or scaling vectors).
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& [name, p] : pm_->named_trainable_parameters())
    (p.dim() < 2 || name.find("bias") != std::string::npos || name.find("norm") != std::string::npos ? no_decay : decay)
        .push_back(p);
  PEFT_CHECK(!decay.empty() || !no_decay.empty(), "training: the model has no trainable parameters");
  auto opts = torch::optim::AdamWOptions(args_.learning_rate)
                  .betas({args_.adam_beta1, args_.adam_beta2})
                  .eps(args_.adam_epsilon);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!decay.empty())
    groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(opts.weight_decay(args_.weight_decay)));
  if (!no_decay.empty())
    groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(opts.weight_decay(0.0)));
  opt_ = std::make_unique<torch::optim::AdamW>(groups, opts);
  take_optimizer_reset(*pm_);  // a request left by steps taken outside this trainer does not apply

  DataLoader loader(train_, args_.per_device_train_batch_size, static_cast<uint64_t>(args_.seed));
  // Learning rate at a step. A tuner that trains twice (LT-SFT, Ansell et al. 2022, sec. 3.1:
  // phase 2 is a second fine-tuning run) gets a schedule per run: warmup and decay over
  // [0, split) and again over [split, total), as two separate runs would.
  const int64_t split_at = second_run_start(*pm_);
  const int64_t split = split_at > 0 && split_at < total_steps_ ? split_at : total_steps_;
  auto lr_at = [&](int64_t s) {
    const int64_t begin = s < split ? 0 : split, len = s < split ? split : total_steps_ - split;
    const int64_t warmup = args_.warmup_steps > 0 ? args_.warmup_steps
                                                  : static_cast<int64_t>(std::ceil(args_.warmup_ratio * len));
    return args_.learning_rate * lr_lambda(args_.lr_scheduler_type, s - begin, warmup, len);
  };
  const std::string log_path = join_path(args_.output_dir, "metrics.jsonl");
  clean_leftovers(args_.output_dir);
  int64_t step = 0;
  nlohmann::json tstate = {{"best_metric", nullptr}, {"best_checkpoint", ""}, {"bad_evals", 0}};
  if (resume) {
    auto all = list_checkpoints(args_.output_dir);
    PEFT_CHECK(!all.empty(), "--resume: no checkpoint-N folder with trainer_state.json in ", args_.output_dir);
    nlohmann::json dstate;
    step = restore_checkpoint(all.back().second, &dstate, &tstate);
    loader.restore(dstate);
    // The log keeps exactly the records up to the checkpoint, so curves have no duplicates.
    std::vector<nlohmann::json> kept;
    if (file_exists(log_path))
      for (auto& r : read_jsonl(log_path))
        if (r.value("step", int64_t(0)) <= step) kept.push_back(r);
    std::string text;
    for (auto& r : kept) text += r.dump() + "\n";
    write_file_atomic(log_path, text);
    std::cerr << "resumed from " << all.back().second << " (step " << step << ")\n";
  } else if (file_exists(log_path)) {
    fs::remove(log_path);
  }
  write_json(join_path(args_.output_dir, "run_config.json"), run_config_);
  JsonlLogger log(log_path);
  ProgressOptions popt;
  if (!args_.progress) popt.every = 1 << 30;
  ProgressBar bar(total_steps_, popt);
  TrainResult result;
  double window_loss = 0;
  int64_t window_n = 0;
  auto params = pm_->trainable_parameters();
  const bool has_eval = eval_ && eval_->size() > 0;

  auto do_eval_and_save = [&](bool save) {
    nlohmann::json ev;
    if (has_eval) {
      ev = evaluate();
      if (eval_hook_) {
        bool was_training = pm_->is_training();
        pm_->eval();
        const nlohmann::json extra = eval_hook_();  // (items() of a temporary would dangle)
        for (auto& kv : extra.items()) ev[kv.key()] = kv.value();
        pm_->train(was_training);
      }
      ev["step"] = step;
      log.log(ev);
      result.final_eval = ev;
      if (ev.contains(args_.metric_for_best_model)) {
        double m = ev[args_.metric_for_best_model].get<double>();
        bool better = tstate["best_metric"].is_null() ||
                      (args_.greater_is_better ? m > tstate["best_metric"].get<double>() : m < tstate["best_metric"].get<double>());
        if (better) {
          tstate["best_metric"] = m;
          tstate["best_checkpoint"] = ckpt_name(step);
          tstate["bad_evals"] = 0;
        } else {
          tstate["bad_evals"] = tstate["bad_evals"].get<int64_t>() + 1;
        }
      }
    }
    if (save) {
      save_checkpoint(step, loader.state(), tstate);
      prune_checkpoints(tstate["best_checkpoint"].get<std::string>());
    }
  };

  if (args_.eval_on_start && has_eval && step == 0) {  // the starting point of the curve
    auto ev = evaluate();
    ev["step"] = 0;
    log.log(ev);
  }
  while (step < total_steps_) {
    double step_loss = 0;
    int64_t tokens = 0;
    for (int64_t micro = 0; micro < args_.gradient_accumulation_steps; ++micro) {
      Batch b = loader.next_batch();
      auto out = pm_->forward(model_input(b));
      double lv = out.loss.item<double>();
      if (!std::isfinite(lv)) {
        auto all = list_checkpoints(args_.output_dir);
        fail("step ", step + 1, ": the loss is ", lv, " (NaN/Inf); training stopped. ",
             all.empty() ? std::string("No checkpoint was written yet.")
                         : "The last good checkpoint is " + all.back().second + " (resume with --resume).",
             " Try a lower learning_rate or max_grad_norm.");
      }
      (out.loss / double(args_.gradient_accumulation_steps)).backward();
      step_loss += lv / args_.gradient_accumulation_steps;
      tokens += b.num_tokens;
    }
    const double lr = lr_at(step);
    for (auto& g : opt_->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    pm_->before_step(step);
    double gnorm = args_.max_grad_norm > 0 ? torch::nn::utils::clip_grad_norm_(params, args_.max_grad_norm) : 0.0;
    opt_->step();
    pm_->after_step(step);
    opt_->zero_grad();
    if (take_optimizer_reset(*pm_)) opt_->state().clear();  // a tuner's phase boundary (LT-SFT)
    ++step;
    window_loss += step_loss;
    ++window_n;
    bar.update(step, step_loss, tokens, str_cat("lr ", lr));
    if (step % std::max<int64_t>(1, args_.logging_steps) == 0 || step == total_steps_) {
      result.train_loss = window_loss / window_n;
      log.log({{"step", step}, {"loss", result.train_loss}, {"lr", lr}, {"grad_norm", gnorm},
               {"epoch", double(loader.epoch()) + double(loader.position()) / double(train_.size())}});
      window_loss = 0;
      window_n = 0;
    }
    bool eval_now = args_.eval_steps > 0 && step % args_.eval_steps == 0;
    bool save_now = args_.save_steps > 0 && step % args_.save_steps == 0;
    if ((eval_now || save_now) && step < total_steps_) {
      if (eval_now) do_eval_and_save(save_now);
      else {
        save_checkpoint(step, loader.state(), tstate);
        prune_checkpoints(tstate["best_checkpoint"].get<std::string>());
      }
      if (args_.early_stopping_patience > 0 && tstate["bad_evals"].get<int64_t>() >= args_.early_stopping_patience) {
        std::cerr << "\nearly stopping at step " << step << ": " << args_.metric_for_best_model << " did not improve in "
                  << args_.early_stopping_patience << " evaluations\n";
        result.stopped_early = true;
        break;
      }
    }
  }
  bar.finish();
  do_eval_and_save(/*save=*/true);
  pm_->save_adapter(args_.output_dir);
  write_training_report(args_.output_dir, read_jsonl(log_path), "peft.cpp training report");
  result.steps = step;
  result.best_checkpoint = tstate["best_checkpoint"].get<std::string>();
  pm_->eval();
  return result;
}

}  // namespace peft
