// Shared setup of the training-memory tests (checkpoint_test, chunked_loss_test): a test model by
// name, a trainable PeftModel over it, and one forward + backward under given MemoryOptions that
// collects the loss and every gradient (the reference run is the same call with the options off).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "models/checkpoint.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

namespace peft::test {

/// "stories260K" (assets/) or a fixture folder under tests/fixtures/hf/models.
inline ModelPtr load_memory_test_model(const std::string& model) {
  if (model == "stories260K") return load_model(source_path("assets/stories260K"));
  return load_model(source_path("tests/fixtures/hf/models/" + model));
}

/// A PeftModel in training mode: method "full" makes every base parameter trainable; any other
/// method adds adapter "default" with random factors (no adapter is the identity: LoRA's B = 0
/// would hide A's gradient).
inline std::shared_ptr<PeftModel> trainable_model(const ModelPtr& base, const std::string& method,
                                                  const nlohmann::json& options) {
  auto pm = std::make_shared<PeftModel>(base);
  torch::manual_seed(5);
  if (method == "full") {
    for (auto& p : base->parameters()) p.set_requires_grad(true);
  } else {
    pm->add_adapter("default", method_config(method, options));
    randomize(*pm, 0.2);
  }
  pm->train();
  return pm;
}

struct GradRun {
  double loss = 0;
  bool has_logits = false;
  std::map<std::string, torch::Tensor> grads;  // every parameter with a gradient
};

/// Forward (seeded) + backward of loss_of(output) with `options` set on `base`; `on_loss` sees the
/// loss before the backward. The options are reset afterwards.
inline GradRun run_with_memory_options(PeftModel& pm, PretrainedModel& base, const ModelInput& in,
                                       const MemoryOptions& options, uint64_t seed,
                                       const std::function<torch::Tensor(const ModelOutput&)>& loss_of,
                                       const std::function<void(const torch::Tensor&)>& on_loss = nullptr) {
  set_memory_options(base, options);
  for (auto& p : pm.parameters()) p.mutable_grad() = torch::Tensor();
  torch::manual_seed(seed);
  auto out = pm.forward(in);
  auto loss = loss_of(out);
  if (on_loss) on_loss(loss);
  loss.backward();
  GradRun r;
  r.loss = loss.item<double>();
  r.has_logits = out.logits.defined();
  for (auto& kv : pm.named_parameters())
    if (kv.value().grad().defined()) r.grads[kv.key()] = kv.value().grad().clone();
  set_memory_options(base, {});
  return r;
}

}  // namespace peft::test
