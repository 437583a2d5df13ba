// `peft forward`: logits (and loss) of a batch of token ids, written to safetensors — the tool
// for comparing numbers with other implementations.
#include <torch/torch.h>

#include <iostream>

#include "cli/command.h"
#include "cli/model_args.h"
#include "peft/error.h"
#include "peft/io.h"
#include "peft/model.h"

namespace peft::cli {
namespace {

int run_forward(Args& a) {
  std::string in_path = a.get("inputs"), out_path = a.get("out");
  LoadedModel lm = load_model_from_args(a);
  TensorMap in = load_safetensors(in_path);
  auto get = [&](const char* k) -> torch::Tensor {
    auto it = in.find(k);
    if (it == in.end()) return {};
    PEFT_CHECK(it->second.scalar_type() == torch::kLong, in_path, ": tensor '", k, "' must be int64, got ",
               c10::toString(it->second.scalar_type()));
    return it->second.clone();
  };
  ModelInput mi;
  mi.input_ids = get("input_ids");
  PEFT_CHECK(mi.input_ids.defined() && mi.input_ids.dim() == 2, in_path, ": needs 'input_ids' [batch, seq]");
  mi.attention_mask = get("attention_mask");
  mi.token_type_ids = get("token_type_ids");
  mi.decoder_input_ids = get("decoder_input_ids");
  // Labels: int64 ids / classes, or real values for a regression head (num_labels 1,
  // problem_type regression: MSE, as transformers' *ForSequenceClassification).
  if (in.count("labels") && at::isFloatingType(in.at("labels").scalar_type())) {
    const bool regression = lm.model->task() == TaskType::SeqCls && regression_head(lm.model->config);
    PEFT_CHECK(regression, in_path, ": tensor 'labels' is ", c10::toString(in.at("labels").scalar_type()),
               "; float labels need a regression head (sequence classification with num_labels 1 or problem_type "
               "'regression'), this model takes int64 labels");
    mi.labels = in.at("labels").clone();
  } else {
    mi.labels = get("labels");
  }
  torch::NoGradGuard ng;
  lm.model->eval();
  ModelOutput out = lm.forward(mi);
  TensorMap res{{"logits", out.logits.to(torch::kFloat32).contiguous()}};
  if (out.loss.defined()) res["loss"] = out.loss.to(torch::kFloat32).reshape({});
  save_safetensors(out_path, res, {{"producer", "peft.cpp forward"}});
  std::cout << "logits " << out.logits.sizes();
  if (out.loss.defined()) std::cout << " loss " << out.loss.item<float>();
  std::cout << " -> " << out_path << "\n";
  return 0;
}

PEFT_REGISTER_COMMAND("forward", "logits (and loss) of a batch of token ids -> safetensors", run_forward);

}  // namespace
}  // namespace peft::cli
