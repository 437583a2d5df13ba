// `peft eval --model DIR [--adapter DIR]... --data FILE [--metrics loss,perplexity,bleu,...]`
// Scores the base model or the model with adapters on a data file: loss/perplexity (and
// classification metrics) on the tokenized examples, and for generation metrics (bleu, chrf,
// rouge_l) greedy continuations of each prompt against its reference(s) (a "references" list
// field when the row has one, else the completion/output/target field). Encoder-decoder models
// (T5) translate each `source` with generate_seq2seq: greedy, or beam search with
// --num_beams N [--length_penalty X] [--early_stopping true].
#include <torch/torch.h>

#include <filesystem>
#include <iostream>
#include <set>

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

namespace peft::cli {
namespace {

/// Greedy continuation of `prompt` with the KV cache, stopping at EOS or a newline-only token
/// run of `max_new` tokens.
std::string greedy(const LoadedModel& lm, const Tokenizer& tok, const std::string& prompt, int64_t max_new) {
  torch::NoGradGuard ng;
  auto ids = tok.encode(prompt, true);
  KVCache cache;
  auto input = torch::tensor(ids, torch::kLong).unsqueeze(0);
  std::vector<int64_t> out;
  for (int64_t i = 0; i < max_new; ++i) {
    ModelInput mi;
    mi.input_ids = input;
    mi.cache = &cache;
    int64_t next = lm.forward(mi).logits[0][-1].argmax().item<int64_t>();
    if (next == tok.eos_id) break;
    out.push_back(next);
    input = torch::tensor({next}, torch::kLong).unsqueeze(0);
  }
  return decode_continuation(tok, ids, out);  // the text after the prompt (leading space kept)
}

std::string field(const nlohmann::json& row, const std::string& key) {
  auto it = row.find(key);
  return it != row.end() && it->is_string() ? it->get<std::string>() : "";
}

int run_eval(Args& a) {
  std::string data_file = a.get("data");
  std::string model_dir = a.get("model");
  auto metrics_json = parse_cli_value("metrics", a.get("metrics", "loss,perplexity"));
  std::set<std::string> metrics;
  for (auto& m : metrics_json) metrics.insert(m.get<std::string>());
  const int64_t max_new = a.get_int("max_new_tokens", 64);
  const int64_t max_examples = a.get_int("max_examples", 0);
  const int64_t show = a.get_int("show", 3);
  const int64_t max_length = a.get_int("max_length", 256);
  LoadedModel lm = load_model_from_args(a);
  lm.model->eval();
  if (lm.peft) lm.peft->eval();
  std::string tok_dir = std::filesystem::is_directory(model_dir) ? model_dir
                                                                 : std::filesystem::path(model_dir).parent_path().string();
  auto tok = load_tokenizer(a.get("tokenizer", tok_dir));
  nlohmann::json result = {{"model", model_dir}, {"data", data_file}};
  if (lm.peft) result["adapters"] = a.get_all("adapter");

  static const std::set<std::string> dataset_metrics = {"loss", "perplexity", "accuracy", "f1", "mcc", "mse", "pearson", "spearman"};
  static const std::set<std::string> gen_metrics = {"bleu", "chrf", "rouge_l"};
  for (auto& m : metrics)
    PEFT_CHECK(dataset_metrics.count(m) || gen_metrics.count(m), "option --metrics: unknown metric '", m,
               "' (known: loss perplexity accuracy f1 mcc mse pearson spearman bleu chrf rouge_l)");

  bool want_ds = false, want_gen = false;
  for (auto& m : metrics) (gen_metrics.count(m) ? want_gen : want_ds) = true;
  DataFormat fmt;  // column mapping and file parsing, as `peft train` takes them
  fmt.file_type = a.get("file_type", fmt.file_type);
  fmt.csv_quoting = a.get_bool("csv_quoting", fmt.csv_quoting);
  fmt.text_column = a.get("text_column", fmt.text_column);
  fmt.text_pair_column = a.get("text_pair_column", fmt.text_pair_column);
  fmt.label_column = a.get("label_column", fmt.label_column);
  fmt.source_column = a.get("source_column", fmt.source_column);
  fmt.target_column = a.get("target_column", fmt.target_column);
  fmt.regression = a.get_bool("regression", lm.model->task() == TaskType::SeqCls && regression_head(lm.model->config));
  if (want_ds) {
    DataConfig dc;
    dc.train_file = data_file;
    dc.format = fmt;
    dc.tokenize.max_length = max_length;
    auto data = load_data(dc, *tok);
    auto keep = [&](const nlohmann::json& ev) {
      nlohmann::json r = nlohmann::json::object();
      for (auto& kv : ev.items()) {
        std::string name = kv.key().substr(5);  // drop "eval_"
        if (metrics.count(name)) r[name] = kv.value();
      }
      return r;
    };
    if (lm.row_adapters.empty()) {
      result.update(keep(evaluate_dataset(lm.forward, data.train, a.get_int("batch_size", 8))));
    } else {  // --row_adapters: every batch scored under each named adapter (or the base)
      auto pm = lm.peft;
      for (auto& name : lm.row_adapters) {
        auto fwd = [pm, name](const ModelInput& in) {
          return pm->forward(in, std::vector<std::string>(in.input_ids.size(0), name));
        };
        result["by_adapter"][name] = keep(evaluate_dataset(fwd, data.train, a.get_int("batch_size", 8)));
      }
    }
  }
  if (want_gen) {
    PEFT_CHECK(lm.row_adapters.empty(), "option --row_adapters: eval scores loss-type metrics per adapter; for ",
               "generation metrics evaluate one adapter at a time (--adapter DIR)");
    auto rows = read_records(data_file, fmt);
    const bool enc_dec = lm.model->is_encoder_decoder();
    GenerateOptions gopt;
    gopt.max_new_tokens = max_new;
    gopt.num_beams = a.get_int("num_beams", 1);
    gopt.length_penalty = a.get_double("length_penalty", 1.0);
    gopt.early_stopping = a.get_bool("early_stopping", false);
    PEFT_CHECK(enc_dec || gopt.num_beams == 1,
               "option --num_beams: beam search is implemented for encoder-decoder models only");
    std::vector<std::string> prompts;
    PEFT_CHECK(!rows.empty(), data_file, ": no rows");
    std::vector<std::string> hyps;
    std::vector<std::vector<std::string>> per_row;
    for (auto& row : rows) {
      if (max_examples > 0 && (int64_t)per_row.size() >= max_examples) break;
      auto& f = row.fields;
      std::string prompt = f.contains("prompt") ? field(f, "prompt")
                           : f.contains("instruction") ? alpaca_prompt(field(f, "instruction"), field(f, "input"))
                                                       : field(f, fmt.source_column);
      PEFT_CHECK(!prompt.empty(), row.where(), ": no prompt / instruction / source field");
      std::vector<std::string> r;
      if (f.contains("references") && f["references"].is_array())
        for (auto& x : f["references"]) r.push_back(x.get<std::string>());
      for (const std::string& k : {std::string("completion"), std::string("output"), fmt.target_column})
        if (r.empty() && f.contains(k)) r.push_back(field(f, k));
      PEFT_CHECK(!r.empty(), row.where(), ": no reference (references / completion / output / target)");
      if (!enc_dec) hyps.push_back(greedy(lm, *tok, prompt, max_new));
      prompts.push_back(prompt);
      per_row.push_back(r);
    }
    if (enc_dec) {  // batched, through the adapters' forward
      std::vector<std::vector<int64_t>> src;
      for (auto& p : prompts) src.push_back(encode_source(*tok, p, max_length));
      hyps = generate_texts(*lm.model, *tok, src, gopt, a.get_int("batch_size", 8), lm.forward);
    }
    for (size_t i = 0; i < hyps.size() && (int64_t)i < show; ++i)
      std::cerr << "--- " << rows[i].where() << "\nprompt:    " << prompts[i] << "\noutput:    " << hyps[i]
                << "\nreference: " << per_row[i][0] << "\n";
    if (metrics.count("bleu")) result["bleu"] = corpus_bleu(hyps, per_row).score;
    if (metrics.count("chrf")) result["chrf"] = corpus_chrf(hyps, per_row).score;
    if (metrics.count("rouge_l")) result["rouge_l"] = rouge_l(hyps, per_row);
    result["generated"] = static_cast<int64_t>(hyps.size());
  }
  std::cout << result.dump() << "\n";
  if (a.has("out")) write_json(a.get("out"), result);
  return 0;
}

PEFT_REGISTER_COMMAND("eval", "score a model (optionally with adapters) on a data file", run_eval);

}  // namespace
}  // namespace peft::cli
