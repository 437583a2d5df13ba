// `peft train --model DIR --train FILE [--eval FILE] --method NAME --output-dir DIR
//             [--config RECIPE] [--resume] [--quantize nf4|fp4|int8] [--gradient_checkpointing true]
//             [--loss_chunk_tokens N] [--key value]...`
// One command from a data file to a trained adapter. Keys: training keys as in Hugging Face's
// TrainingArguments, method keys as in the peft configs (r, lora_alpha, target_modules, ...),
// data keys (max_length, format, columns, eval_fraction, pack, bad_rows). The merged recipe is
// saved as output_dir/run_config.json: `peft train --config that-file` repeats the run.
//
// Data-parallel: under torchrun (RANK, WORLD_SIZE, ... set) every rank runs this command and
// joins a c10d process group; `--nproc_per_node N` starts N ranks on this machine itself
// (docs/DISTRIBUTED.md).
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "cli/command.h"
#include "cli/model_args.h"
#include "cli/process.h"
#include "cli/quant_args.h"
#include "cli/recipe.h"
#include "cli/seq2seq_gen.h"
#include "io/suggest.h"
#include "models/quant_linear.h"
#include "tuners/loftq.h"
#include "peft/data.h"
#include "peft/dist.h"
#include "peft/error.h"
#include "peft/io.h"
#include "peft/precision.h"
#include "peft/metrics.h"
#include "peft/tokenizer.h"
#include "models/checkpoint.h"
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

// Keys of the local launcher, not of the run (the ranks do not see them).
const std::vector<std::string> kLauncherKeys = {"nproc_per_node", "master_port", "master_addr"};

int launch(Args& a) {
  dist::LaunchOptions lo;
  lo.nproc = a.get_int("nproc_per_node", 1);
  lo.master_port = a.get_int("master_port", 0);
  lo.master_addr = a.get("master_addr", lo.master_addr);
  nlohmann::json recipe = recipe_from_args(a, {"resume"});
  lo.grace_s = recipe.value("ddp_timeout", TrainingArguments().ddp_timeout) + 30;
  std::vector<std::string> argv = {"train"};
  for (auto& [k, v] : a.options())
    if (std::find(kLauncherKeys.begin(), kLauncherKeys.end(), k) == kLauncherKeys.end()) argv.push_back("--" + k + "=" + v);
  for (auto& p : a.positionals()) argv.push_back(p);
  return dist::launch_local(argv, lo);
}

int train_rank(Args& a, const dist::Env& env, std::shared_ptr<dist::Group>* group);

int run_train(Args& a) {
  if (a.has("nproc_per_node") && a.get_int("nproc_per_node", 1) > 1) return launch(a);
  const dist::Env env = dist::Env::from_environment();
  std::shared_ptr<dist::Group> group;
  if (!env.distributed()) return train_rank(a, env, &group);
  try {
    return train_rank(a, env, &group);
  } catch (const std::exception& e) {
    std::string m = e.what();
    if (m.rfind("distributed: rank", 0) != 0) m = "rank " + std::to_string(env.rank) + ": " + m;
    if (group) group->report_failure(m);
    throw Error(m);
  }
}

// The base model's dtype from --dtype, or the recipe keys transformers uses: `torch_dtype`
// (from_pretrained) and `bf16` / `fp16` (TrainingArguments); conflicting ones are an error.
torch::Dtype training_dtype(nlohmann::json& r) {
  std::vector<std::pair<std::string, torch::Dtype>> said;
  for (const char* k : {"dtype", "torch_dtype"}) {
    if (!r.contains(k)) continue;
    PEFT_CHECK(r[k].is_string(), "peft train: option ", k, " must be a string (float32, bfloat16, float16), got ", r[k].dump());
    said.emplace_back(k, parse_dtype_name(r[k].get<std::string>(), std::string("peft train: option ") + k, false));
    r.erase(k);
  }
  for (auto [k, t] : {std::pair<const char*, torch::Dtype>{"bf16", torch::kBFloat16}, {"fp16", torch::kFloat16}}) {
    if (!r.contains(k)) continue;
    PEFT_CHECK(r[k].is_boolean(), "peft train: option ", k, " must be true or false, got ", r[k].dump());
    if (r[k].get<bool>()) said.emplace_back(k, t);
    r.erase(k);
  }
  for (auto& s : said)
    PEFT_CHECK(s.second == said[0].second, "peft train: options ", said[0].first, " (", dtype_name(said[0].second), ") and ",
               s.first, " (", dtype_name(s.second), ") disagree");
  return said.empty() ? torch::kFloat32 : said[0].second;
}

int train_rank(Args& a, const dist::Env& env, std::shared_ptr<dist::Group>* group) {
  const bool main = env.rank == 0;  // the other ranks print only errors
  std::vector<std::string> skip = {"resume"};
  skip.insert(skip.end(), kLauncherKeys.begin(), kLauncherKeys.end());
  nlohmann::json recipe = recipe_from_args(a, skip);
  nlohmann::json saved = recipe;  // what run_config.json records
  nlohmann::json r = recipe;
  const bool resume = a.get_bool("resume", false);
  std::string model_dir = pop<std::string>(r, "model", "");
  std::string train_file = pop<std::string>(r, "train", "");
  std::string eval_file = pop<std::string>(r, "eval", "");
  std::string method = pop<std::string>(r, "method", "lora");
  const torch::Dtype dtype = training_dtype(r);
  PEFT_CHECK(!model_dir.empty(), "peft train: --model DIR is required");
  PEFT_CHECK(!train_file.empty(), "peft train: --train FILE is required");
  check_compute_dtype(dtype, torch::kCPU, "peft train --dtype " + dtype_name(dtype));
  // Frozen base in `dtype`, trainable tensors in float32, Linear products in `dtype`
  // (docs/PRECISION.md); nothing changes for float32.
  MatmulDtypeGuard matmul_dtype(is_half_dtype(dtype) ? std::optional<torch::ScalarType>(dtype) : std::nullopt);
  // --quantize / load_in_4bit ...: a quantized frozen base (QLoRA; docs/QUANTIZATION.md).
  const auto qcfg = pop_quant_config(r);
  // Activation memory (docs/MEMORY.md): TrainingArguments' gradient_checkpointing, and the
  // causal-LM loss over chunks of loss_chunk_tokens tokens (0: off).
  const bool grad_ckpt = pop(r, "gradient_checkpointing", false);
  const int64_t loss_chunk = pop<int64_t>(r, "loss_chunk_tokens", 0);
  PEFT_CHECK(loss_chunk >= 0, "peft train: option loss_chunk_tokens must be >= 0 (0 = off), got ", loss_chunk);

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
  if (main) std::cerr << "data: " << data.train.size() << " training examples, " << data.eval.size() << " eval examples ("
            << data_kind_name(data.train.kind) << ")\n";

  LoadOptions lo;
  lo.dtype = dtype;
  if (data.train.kind == DataKind::Classification) {
    lo.task = TaskType::SeqCls;
    lo.num_labels = data.train.regression ? 1 : static_cast<int64_t>(data.train.label_names.size());
  }
  ModelPtr model;
  // An initialisation that reads and rewrites the float base weights (LoftQ) needs them: the
  // model then loads in float and is quantized once the adapter is in (tuners/loftq.h).
  const bool quantize_after = qcfg && init_rewrites_base(method_config(method, r));
  if (qcfg && !quantize_after) {
    QuantizeReport rep;
    model = load_model_quantized(model_dir, *qcfg, lo, &rep);
    if (main) std::cerr << rep.to_string() << "\n";
  } else {
    model = load_model(model_dir, lo);
  }
  set_memory_options(*model, {grad_ckpt, loss_chunk});
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
  const std::string stack_adapters = pop<std::string>(r, "stack_adapters", "");

  // Everything left is a method key; check it against the method's config before building.
  nlohmann::json mcfg = method_config(method, r);
  auto tuner = find_tuner(mcfg["peft_type"].get<std::string>());
  const auto method_keys = tuner->config_keys();
  for (auto& kv : r.items())
    PEFT_CHECK(std::find(method_keys.begin(), method_keys.end(), kv.key()) != method_keys.end(),
               "peft train: unknown option --", kv.key(), " (not a training, data or ", tuner->peft_type(), " key)",
               did_you_mean(kv.key(), method_keys, "--"));
  TrainingSetup setup;
  setup.total_steps = total_training_steps(args, static_cast<int64_t>(data.train.size()), env.world_size);
  setup.encode = [&tok](const std::string& text) { return tok->encode(text, true); };
  tuner->prepare_training_config(mcfg, setup);
  if (lo.task && (!mcfg.contains("modules_to_save") || mcfg["modules_to_save"].is_null())) {
    auto roles = model->roles();  // a new classification head must train (peft does the same)
    if (roles.count(role::kHead)) mcfg["modules_to_save"] = {roles[role::kHead]};
  }
  // stack_adapters NAME=DIR,...: frozen adapters under the new one (AdapterHub's Stack, MAD-X:
  // a task adapter trained over a language adapter; AdapterFusion over task adapters); they act
  // in every forward, only "default" trains and is saved. Loaded first: the new adapter wraps
  // them and may name them (a composition block).
  std::vector<std::string> order;
  if (!stack_adapters.empty()) {
    for (auto& spec : split_commas(stack_adapters)) {
      auto [name, dir] = split_adapter_name(spec);
      PEFT_CHECK(!name.empty() && name != "default", "option --stack_adapters: '", spec,
                 "' must be NAME=DIR (NAME not 'default')");
      pm->load_adapter(dir, name);
      order.push_back(name);
    }
  }
  pm->add_adapter("default", mcfg);
  if (quantize_after) {
    auto rep = quantize_model(*model, *qcfg);
    if (main) std::cerr << rep.to_string() << " (after the adapter's initialisation)\n";
  }
  if (!stack_adapters.empty()) {
    order.push_back("default");
    pm->set_adapter(order);
    for (size_t i = 0; i + 1 < order.size(); ++i) pm->set_frozen(order[i]);
    if (main) std::cerr << "stacked under the new adapter (frozen): " << stack_adapters << "\n";
  }
  if (main) std::cerr << pm->trainable_report().to_string() << "\n";

  saved["method"] = method;
  Trainer trainer(pm, args, data.train, data.eval.size() ? &data.eval : nullptr, saved);
  trainer.set_saved_adapter("default");
  if (env.distributed()) {
    // Every rank must run the same recipe on the same data with the same trainable layout.
    std::vector<std::vector<int64_t>> ids;
    for (auto& e : data.train.examples) ids.push_back(e.input_ids);
    dist::GroupOptions go;
    go.timeout_s = args.ddp_timeout;
    go.backend = args.ddp_backend;
    *group = dist::Group::join(env, go, dist::fingerprint(saved, pm->named_trainable_parameters(), ids));
    trainer.set_process_group(*group);
    if (main)
      std::cerr << "distributed: " << env.world_size << " ranks joined (" << go.backend << ", store "
                << env.master_addr << ":" << env.master_port << ", timeout " << go.timeout_s << " s)\n";
  }
  if (gen && data.eval.size()) {
    const Dataset& ev = data.eval;
    const Tokenizer& tk = *tok;
    const int64_t bs = args.per_device_eval_batch_size;
    dist::Group* g = group->get();
    trainer.set_eval_hook([&ev, &tk, model, pm, gopt, gen_examples, bs, g]() {
      // Data-parallel: rank r generates for examples r, r + W, ...; rank 0 gathers the texts
      // in dataset order and scores them (the trainer passes rank 0's record to every rank).
      const size_t n = gen_examples > 0 ? std::min(ev.size(), static_cast<size_t>(gen_examples)) : ev.size();
      const size_t rank = g ? static_cast<size_t>(g->rank()) : 0, world = g ? static_cast<size_t>(g->world_size()) : 1;
      std::vector<std::vector<int64_t>> src;
      for (size_t i = rank; i < n; i += world) src.push_back(ev.examples[i].input_ids);
      auto hyps = src.empty() ? std::vector<std::string>()
                              : generate_texts(*model, tk, src, gopt, bs, [pm](const ModelInput& in) { return pm->forward(in); });
      if (g) {
        auto parts = g->all_gather_strings(nlohmann::json(hyps).dump(), "generated evaluation texts");
        if (!g->is_main()) return nlohmann::json::object();
        std::vector<std::vector<std::string>> per(world);
        for (size_t r = 0; r < world; ++r) per[r] = nlohmann::json::parse(parts[r]).get<std::vector<std::string>>();
        hyps.assign(n, "");
        for (size_t i = 0; i < n; ++i) hyps[i] = per[i % world].at(i / world);
      }
      std::vector<std::vector<std::string>> refs;
      for (size_t i = 0; i < n; ++i) refs.push_back({tk.decode(ev.examples[i].labels, /*skip_special=*/true)});
      return nlohmann::json{{"eval_bleu", corpus_bleu(hyps, refs).score}, {"eval_chrf", corpus_chrf(hyps, refs).score},
                            {"eval_generated", static_cast<int64_t>(hyps.size())}};
    });
  }
  TrainResult res = trainer.train(resume);
  if (!main) return 0;
  std::cout << "trained " << res.steps << " steps; final train loss " << res.train_loss << "\n";
  if (!res.final_eval.is_null()) std::cout << "eval: " << res.final_eval.dump() << "\n";
  std::cout << "adapter: " << args.output_dir << " (report: " << join_path(args.output_dir, "report.html") << ")\n";
  return 0;
}

PEFT_REGISTER_COMMAND("train", "fine-tune a model with a PEFT method on a data file", run_train);

}  // namespace
}  // namespace peft::cli
