// `peft train --model DIR --train FILE [--eval FILE] --method NAME --output-dir DIR
//             [--config RECIPE] [--resume] [--key value]...`
// One command from a data file to a trained adapter. Keys: training keys as in Hugging Face's
// TrainingArguments, method keys as in the peft configs (r, lora_alpha, target_modules, ...),
// data keys (max_length, format, columns, eval_fraction, pack, bad_rows). The merged recipe is
// saved as output_dir/run_config.json: `peft train --config that-file` repeats the run.
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "cli/command.h"
#include "cli/model_args.h"
#include "cli/recipe.h"
#include "cli/seq2seq_gen.h"
#include "peft/data.h"
#include "peft/error.h"
#include "peft/io.h"
#include "peft/metrics.h"
#include "peft/tokenizer.h"
#include "peft/trainer.h"
#include "peft/tuner.h"

namespace peft::cli {
namespace {

template <class T>
T pop(nlohmann::json& r, const char* key, T dflt) {
  if (!r.contains(key)) return dflt;
  T v;
  try {
    v = r[key].get<T>();
  } catch (...) {
    fail("option '", key, "': unexpected value ", r[key].dump());
  }
  r.erase(key);
  return v;
}

/// Data keys of the recipe -> DataConfig (the keys are removed from `r`).
DataConfig data_config(nlohmann::json& r, const std::string& train, const std::string& eval, uint64_t seed) {
  DataConfig c;
  c.train_file = train;
  c.eval_file = eval;
  c.seed = seed;
  c.eval_fraction = pop(r, "eval_fraction", 0.0);
  c.pack = pop(r, "pack", false);
  c.tokenize.max_length = pop<int64_t>(r, "max_length", 256);
  c.tokenize.max_target_length = pop<int64_t>(r, "max_target_length", 0);
  auto& f = c.format;
  f.kind = data_kind_from_name(pop<std::string>(r, "format", "auto"));
  f.bad_rows = bad_row_policy_from_name(pop<std::string>(r, "bad_rows", "fail"));
  f.file_type = pop<std::string>(r, "file_type", f.file_type);
  f.csv_quoting = pop(r, "csv_quoting", f.csv_quoting);  // off for GLUE's TSVs
  f.regression = pop(r, "regression", false);
  f.text_column = pop(r, "text_column", f.text_column);
  f.text_pair_column = pop(r, "text_pair_column", f.text_pair_column);
  f.label_column = pop(r, "label_column", f.label_column);
  f.prompt_column = pop(r, "prompt_column", f.prompt_column);
  f.completion_column = pop(r, "completion_column", f.completion_column);
  f.instruction_column = pop(r, "instruction_column", f.instruction_column);
  f.input_column = pop(r, "input_column", f.input_column);
  f.output_column = pop(r, "output_column", f.output_column);
  f.source_column = pop(r, "source_column", f.source_column);
  f.target_column = pop(r, "target_column", f.target_column);
  if (r.contains("labels")) c.tokenize.labels = pop<std::vector<std::string>>(r, "labels", {});
  return c;
}

int run_train(Args& a) {
  nlohmann::json recipe = recipe_from_args(a, {"resume"});
  nlohmann::json saved = recipe;  // what run_config.json records
  nlohmann::json r = recipe;
  const bool resume = a.get_bool("resume", false);
  std::string model_dir = pop<std::string>(r, "model", "");
  std::string train_file = pop<std::string>(r, "train", "");
  std::string eval_file = pop<std::string>(r, "eval", "");
  std::string method = pop<std::string>(r, "method", "lora");
  std::string dtype = pop<std::string>(r, "dtype", "float32");
  PEFT_CHECK(!model_dir.empty(), "peft train: --model DIR is required");
  PEFT_CHECK(!train_file.empty(), "peft train: --train FILE is required");
  PEFT_CHECK(dtype == "float32", "peft train: --dtype ", dtype, " is not supported for training yet (use float32)");

  TrainingArguments args = TrainingArguments::from_json(r);
  PEFT_CHECK(!args.output_dir.empty(), "peft train: --output-dir DIR is required");
  torch::manual_seed(static_cast<uint64_t>(args.seed));

  std::string tok_dir = std::filesystem::is_directory(model_dir) ? model_dir
                                                                 : std::filesystem::path(model_dir).parent_path().string();
  auto tok = load_tokenizer(pop<std::string>(r, "tokenizer", tok_dir));
  // A model whose own head is a regressor (num_labels 1 / problem_type regression) reads real-valued
  // labels unless the recipe says otherwise.
  if (!r.contains("regression")) {
    std::string cfg_path = join_path(model_dir, "config.json");
    if (std::filesystem::is_regular_file(cfg_path) && regression_head(read_json(cfg_path))) r["regression"] = true;
  }
  DataConfig dc = data_config(r, train_file, eval_file, static_cast<uint64_t>(args.seed));
  DataSplits data = load_data(dc, *tok);
  std::cerr << "data: " << data.train.size() << " training examples, " << data.eval.size() << " eval examples ("
            << data_kind_name(data.train.kind) << ")\n";

  LoadOptions lo;
  if (data.train.kind == DataKind::Classification) {
    lo.task = TaskType::SeqCls;
    lo.num_labels = data.train.regression ? 1 : static_cast<int64_t>(data.train.label_names.size());
  }
  auto model = load_model(model_dir, lo);
  if (lo.task) {  // the head is new: record the labels so the saved config reads back
    nlohmann::json id2label = nlohmann::json::object();
    for (size_t i = 0; i < data.train.label_names.size(); ++i) id2label[std::to_string(i)] = data.train.label_names[i];
    if (data.train.regression) {
      id2label = {{"0", "LABEL_0"}};
      model->config["problem_type"] = "regression";
    }
    model->config["id2label"] = id2label;
  }
  // Seq2seq: BLEU / chrF of generated eval outputs at every evaluation (Seq2SeqTrainer's
  // predict_with_generate), decoded with the same tokenizer.
  const bool s2s = data.train.kind == DataKind::Seq2Seq;
  const bool gen = pop(r, "predict_with_generate", s2s);
  GenerateOptions gopt;
  gopt.max_new_tokens = pop<int64_t>(r, "generation_max_length", 64);
  gopt.num_beams = pop<int64_t>(r, "generation_num_beams", 1);
  gopt.length_penalty = pop(r, "length_penalty", 1.0);
  const int64_t gen_examples = pop<int64_t>(r, "generation_max_examples", 0);
  PEFT_CHECK(!gen || model->is_encoder_decoder(), "peft train: predict_with_generate needs an encoder-decoder model");
  auto pm = std::make_shared<PeftModel>(model);

  // Everything left is a method key; check it against the method's config before building.
  nlohmann::json mcfg = method_config(method, r);
  auto tuner = find_tuner(mcfg["peft_type"].get<std::string>());
  auto defaults = tuner->defaults();
  auto ext = tuner->extension_keys();
  for (auto& kv : r.items())
    PEFT_CHECK(defaults.contains(kv.key()) || std::find(ext.begin(), ext.end(), kv.key()) != ext.end(),
               "peft train: unknown option --", kv.key(), " (not a training, data or ", tuner->peft_type(), " key)");
  if (defaults.contains("total_step") && (!mcfg.contains("total_step") || mcfg["total_step"].is_null()))
    mcfg["total_step"] = Trainer(pm, args, data.train, nullptr).total_steps();
  if (lo.task && (!mcfg.contains("modules_to_save") || mcfg["modules_to_save"].is_null())) {
    auto roles = model->roles();  // a new classification head must train (peft does the same)
    if (roles.count("head")) mcfg["modules_to_save"] = {roles["head"]};
  }
  // Prompt tuning's TEXT init: the tuner has no tokenizer, so the ids are filled in here (with
  // special tokens, as peft's tokenizer(prompt_tuning_init_text) call adds them).
  if (mcfg.value("prompt_tuning_init", std::string()) == "TEXT" && mcfg.value("prompt_tuning_init_text", nlohmann::json()).is_string() &&
      !mcfg.contains("prompt_tuning_init_token_ids"))
    mcfg["prompt_tuning_init_token_ids"] = tok->encode(mcfg["prompt_tuning_init_text"].get<std::string>(), true);
  pm->add_adapter("default", mcfg);
  std::cerr << pm->trainable_report().to_string() << "\n";

  saved["method"] = method;
  Trainer trainer(pm, args, data.train, data.eval.size() ? &data.eval : nullptr, saved);
  if (gen && data.eval.size()) {
    const Dataset& ev = data.eval;
    const Tokenizer& tk = *tok;
    const int64_t bs = args.per_device_eval_batch_size;
    trainer.set_eval_hook([&ev, &tk, model, pm, gopt, gen_examples, bs]() {
      std::vector<std::vector<int64_t>> src;
      std::vector<std::vector<std::string>> refs;
      for (auto& e : ev.examples) {
        if (gen_examples > 0 && static_cast<int64_t>(src.size()) >= gen_examples) break;
        src.push_back(e.input_ids);
        refs.push_back({tk.decode(e.labels, /*skip_special=*/true)});
      }
      auto hyps = generate_texts(*model, tk, src, gopt, bs, [pm](const ModelInput& in) { return pm->forward(in); });
      return nlohmann::json{{"eval_bleu", corpus_bleu(hyps, refs).score}, {"eval_chrf", corpus_chrf(hyps, refs).score},
                            {"eval_generated", static_cast<int64_t>(hyps.size())}};
    });
  }
  TrainResult res = trainer.train(resume);
  std::cout << "trained " << res.steps << " steps; final train loss " << res.train_loss << "\n";
  if (!res.final_eval.is_null()) std::cout << "eval: " << res.final_eval.dump() << "\n";
  std::cout << "adapter: " << args.output_dir << " (report: " << join_path(args.output_dir, "report.html") << ")\n";
  return 0;
}

PEFT_REGISTER_COMMAND("train", "fine-tune a model with a PEFT method on a data file", run_train);

}  // namespace
}  // namespace peft::cli
