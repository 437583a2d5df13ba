// The training loop every tuner trains through: AdamW over the trainable parameters only,
// warmup + linear/cosine/constant schedules, gradient accumulation and clipping, periodic
// evaluation with early stopping, atomic checkpoints (keep the last K and the best) and an
// exact resume (adapter, optimizer state, schedule, RNG state, data position).
//
//   peft::TrainingArguments args = peft::TrainingArguments::from_json(recipe);
//   peft::Trainer trainer(peft_model, args, data.train, &data.eval);
//   peft::TrainResult r = trainer.train(/*resume=*/false);
//
// Data-parallel (docs/DISTRIBUTED.md): trainer.set_process_group(group) before train() shards
// the training and eval data over the ranks, sums the trainable gradients over them once per
// optimizer step, and leaves the writing (logs, checkpoints, reports) to rank 0.
#pragma once
#include <torch/optim/optimizer.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "peft/data.h"
#include "peft/tuner.h"

namespace peft {

namespace dist {
class Group;
}

/// Keys and defaults as in Hugging Face's TrainingArguments.
struct TrainingArguments {
  std::string output_dir;
  double learning_rate = 2e-4;
  int64_t max_steps = -1;  // > 0 overrides num_train_epochs
  double num_train_epochs = 1;
  int64_t per_device_train_batch_size = 8, per_device_eval_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  int64_t warmup_steps = 0;
  double warmup_ratio = 0;
  std::string lr_scheduler_type = "linear";  // linear | cosine | constant | constant_with_warmup
  double weight_decay = 0, adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;  // <= 0: no clipping
  int64_t seed = 42;
  int64_t eval_steps = 0, save_steps = 0, logging_steps = 10;  // 0: eval/save at the end only
  int64_t save_total_limit = 2;  // checkpoints kept besides the best; <= 0: all
  std::string metric_for_best_model = "eval_loss";
  bool greater_is_better = false;
  int64_t early_stopping_patience = 0;  // evaluations without improvement; 0: off
  bool eval_on_start = false;  // evaluate (and log, as step 0) before the first step of a fresh run
  bool progress = true;
  // Distributed (HF's names): collective/join timeout in seconds, gradient bucket size, backend.
  double ddp_timeout = 300;
  double ddp_bucket_cap_mb = 25;
  std::string ddp_backend = "gloo";
  bool ddp_overlap = true;  // ours: start each bucket's sum during backward (DDP's reducer); false: after it

  /// Reads the keys it knows from `j` and removes them; errors name the key and the type.
  static TrainingArguments from_json(nlohmann::json& j);
  nlohmann::json to_json() const;
  /// The names of every key (for `peft train --help` and unknown-key errors).
  static std::vector<std::string> keys();
};

/// Optimizer steps of a run: max_steps, else num_train_epochs of global batches
/// (per_device_train_batch_size x world_size) over gradient_accumulation_steps.
int64_t total_training_steps(const TrainingArguments& a, int64_t train_size, int64_t world_size = 1);

/// LR multiplier after `step` optimizer steps (transformers' get_*_schedule_with_warmup).
double lr_lambda(const std::string& type, int64_t step, int64_t warmup, int64_t total);

struct TrainResult {
  int64_t steps = 0;
  double train_loss = 0;  // mean over the last logging window
  nlohmann::json final_eval;  // last evaluation
  std::string best_checkpoint;
  bool stopped_early = false;
};

class Trainer {
 public:
  Trainer(PeftModelPtr model, TrainingArguments args, const Dataset& train, const Dataset* eval,
          nlohmann::json run_config = nlohmann::json::object());
  /// Trains to max_steps. resume: continue from the newest checkpoint in output_dir (error if
  /// none). Writes output_dir/{adapter files, metrics.jsonl, report.svg, report.html,
  /// run_config.json} and output_dir/checkpoint-N/. A NaN/Inf loss stops with a peft::Error
  /// and leaves the checkpoints as they were.
  TrainResult train(bool resume = false);
  /// Loss / perplexity (causal LM), accuracy / F1 / MCC (classification), Pearson / Spearman
  /// (regression) on the eval set, as "eval_*" keys.
  nlohmann::json evaluate();
  int64_t total_steps() const { return total_steps_; }
  /// Data-parallel training and evaluation over `group` (every rank calls train()/evaluate()
  /// alike); nullptr = one process.
  void set_process_group(std::shared_ptr<dist::Group> group);
  /// Extra metrics computed at every evaluation (e.g. BLEU/chrF of generated translations),
  /// merged into the eval record ("eval_*" keys); called with the model in eval mode.
  void set_eval_hook(std::function<nlohmann::json()> hook) { eval_hook_ = std::move(hook); }
  /// The adapter written to checkpoints and output_dir (and restored on resume); empty: the
  /// model's first adapter. Training over frozen stacked adapters names the one that trains.
  void set_saved_adapter(std::string name) { saved_adapter_ = std::move(name); }

 private:
  struct Run;  // one call of train(): its state and steps (src/train/trainer.cpp)
  void save_checkpoint(int64_t step, const nlohmann::json& data_state, const nlohmann::json& trainer_state);
  int64_t restore_checkpoint(const std::string& dir, nlohmann::json* data_state, nlohmann::json* trainer_state);
  void prune_checkpoints(const std::string& best);

  std::string saved_adapter() const { return saved_adapter_.empty() ? pm_->first_adapter() : saved_adapter_; }

  PeftModelPtr pm_;
  std::string saved_adapter_;
  TrainingArguments args_;
  const Dataset& train_;
  const Dataset* eval_;
  nlohmann::json run_config_;
  int64_t total_steps_ = 0;
  std::unique_ptr<torch::optim::Optimizer> opt_;
  std::function<nlohmann::json()> eval_hook_;
  std::shared_ptr<dist::Group> group_;
};

/// Mean token loss of a causal LM / mean loss of a classifier over a dataset, plus task metrics.
/// With `group`, each rank evaluates examples rank, rank + world_size, ... and the sums and
/// predictions are combined, so every rank returns the metrics of the whole set.
nlohmann::json evaluate_dataset(const std::function<ModelOutput(const ModelInput&)>& forward, const Dataset& ds,
                                int64_t batch_size, dist::Group* group = nullptr);

/// What a batch's loss is a mean over: label tokens (causal LM: after the shift; seq2seq) or
/// examples (classification / regression). Data-parallel ranks weight their losses by it.
double loss_units(const Dataset& ds, const Batch& b);

}  // namespace peft
