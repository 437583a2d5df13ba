#include "cli/model_args.h"

#include <torch/torch.h>

#include <algorithm>
#include <iostream>

#include "cli/process.h"
#include "cli/quant_args.h"
#include "models/quant_linear.h"
#include "tuners/loftq.h"
#include "peft/error.h"
#include "peft/io.h"
#include "peft/precision.h"

namespace peft::cli {

bool regression_head(const nlohmann::json& c) {
  if (!c.is_object()) return false;
  if (c.contains("problem_type") && c["problem_type"].is_string()) return c["problem_type"] == "regression";
  if (c.contains("id2label") && c["id2label"].is_object()) return c["id2label"].size() == 1;
  return c.contains("num_labels") && c["num_labels"].is_number_integer() && c["num_labels"].get<int64_t>() == 1;
}

std::pair<std::string, double> parse_adapter_arg(const std::string& arg) {
  // DIR[:SCALE]; a colon followed by something that is not a number belongs to the path.
  auto pos = arg.rfind(':');
  if (pos != std::string::npos && pos + 1 < arg.size()) {
    const std::string tail = arg.substr(pos + 1);
    char* end = nullptr;
    double v = std::strtod(tail.c_str(), &end);
    if (end && *end == '\0') return {arg.substr(0, pos), v};
  }
  return {arg, 1.0};
}

std::pair<std::string, std::string> split_adapter_name(const std::string& arg) {
  auto eq = arg.find('=');
  if (eq == std::string::npos || eq == 0) return {"", arg};
  std::string name = arg.substr(0, eq);
  if (name.find_first_of("/\\.:") != std::string::npos) return {"", arg};
  return {name, arg.substr(eq + 1)};
}

// A SEQ_CLS adapter trained by `peft train` on a bare encoder / causal-LM checkpoint carries the
// classification head it created (modules_to_save): the base is then loaded with that head.
static void classifier_from_adapter(const std::string& dir, LoadOptions* opts) {
  auto cfg = read_adapter_config(dir);
  if (cfg.value("task_type", nlohmann::json()) != "SEQ_CLS") return;
  std::string w = join_path(dir, "adapter_model.safetensors");
  if (!file_exists(w)) return;
  for (auto& [k, t] : load_safetensors(w))
    for (const std::string suffix : {".classifier.weight", ".classifier.out_proj.weight", ".score.weight"})
      if (k.size() > suffix.size() && k.compare(k.size() - suffix.size(), suffix.size(), suffix) == 0) {
        opts->task = TaskType::SeqCls;
        opts->num_labels = t.size(0);
        return;
      }
}

LoadedModel load_model_from_args(Args& a) {
  LoadOptions opts;
  opts.dtype = parse_dtype_name(a.get("dtype", "float32"), "option --dtype");
  check_compute_dtype(opts.dtype, torch::kCPU, "option --dtype");
  LoadedModel lm;
  // Full-precision Linear weights (modules_to_save copies of an adapter) compute in the same dtype.
  if (is_half_dtype(opts.dtype)) lm.matmul_dtype = std::make_shared<MatmulDtypeGuard>(opts.dtype);
  auto adapters = a.get_all("adapter");
  if (!adapters.empty()) {
    std::string cfg_path = join_path(a.get("model"), "config.json");
    std::string arch;
    if (file_exists(cfg_path)) {
      auto cfg = read_json(cfg_path);
      if (cfg.contains("architectures") && cfg["architectures"].is_array() && !cfg["architectures"].empty() &&
          cfg["architectures"][0].is_string())
        arch = cfg["architectures"][0].get<std::string>();
    }
    if (arch.find("ForSequenceClassification") == std::string::npos)
      classifier_from_adapter(parse_adapter_arg(split_adapter_name(adapters[0]).second).first, &opts);
  }
  auto qc = quant_config_from_args(a);  // --quantize: a quantized frozen base (docs/QUANTIZATION.md)
  // An adapter whose initialisation rewrites the float base (LoftQ: peft re-runs it on load) needs
  // the float model; it is quantized once the adapters are in.
  bool quantize_after = false;
  for (auto& spec : adapters)
    if (qc && init_rewrites_base(read_adapter_config(parse_adapter_arg(split_adapter_name(spec).second).first)))
      quantize_after = true;
  if (qc && !quantize_after) {
    QuantizeReport rep;
    lm.model = load_model_quantized(a.get("model"), *qc, opts, &rep);
    std::cerr << rep.to_string() << "\n";
  } else {
    lm.model = load_model(a.get("model"), opts);
  }
  if (a.has("row_adapters")) {
    lm.row_adapters = split_commas(a.get("row_adapters"));
    PEFT_CHECK(!lm.row_adapters.empty(), "option --row_adapters: give one adapter name (or ", PeftModel::kBaseRow,
               ") per batch row, comma-separated");
    PEFT_CHECK(!adapters.empty(), "option --row_adapters needs adapters: --adapter NAME=DIR (repeatable)");
  }
  if (adapters.empty()) {
    auto m = lm.model;
    lm.forward = [m](const ModelInput& in) { return m->forward(in); };
    return lm;
  }
  lm.peft = std::make_shared<PeftModel>(lm.model);
  std::vector<std::string> names;
  std::vector<double> scales;
  for (size_t i = 0; i < adapters.size(); ++i) {
    auto [given, rest] = split_adapter_name(adapters[i]);
    auto [dir, scale] = parse_adapter_arg(rest);
    std::string name = given.empty() ? "adapter" + std::to_string(i) : given;
    PEFT_CHECK(name != PeftModel::kBaseRow, "option --adapter: the name ", name, " is reserved for rows without adapter");
    PEFT_CHECK(std::find(names.begin(), names.end(), name) == names.end(), "option --adapter: the name '", name,
               "' is given twice");
    lm.peft->load_adapter(dir, name);
    names.push_back(name);
    scales.push_back(scale);
    std::cerr << "adapter " << dir << " (" << lm.peft->adapter(name).tuner->peft_type() << ", scale " << scale << ")\n";
  }
  if (quantize_after) std::cerr << quantize_model(*lm.model, *qc).to_string() << " (after loading the adapters)\n";
  lm.peft->set_adapter(names);  // all of them act together (each with its scale)
  for (size_t i = 0; i < names.size(); ++i) lm.peft->set_scale(names[i], scales[i]);
  auto pm = lm.peft;
  if (!lm.row_adapters.empty()) {
    auto rows = lm.row_adapters;
    for (auto& r : rows)
      PEFT_CHECK(r == PeftModel::kBaseRow || std::find(names.begin(), names.end(), r) != names.end(),
                 "option --row_adapters: '", r, "' is not an adapter name (given: ", a.get("row_adapters"),
                 "; name adapters with --adapter NAME=DIR, rows without adapter with ", PeftModel::kBaseRow, ")");
    lm.forward = [pm, rows](const ModelInput& in) { return pm->forward(in, rows); };
    return lm;
  }
  lm.forward = [pm](const ModelInput& in) { return pm->forward(in); };
  return lm;
}

}  // namespace peft::cli
