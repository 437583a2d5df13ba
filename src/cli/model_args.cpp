#include "cli/model_args.h"

#include <torch/torch.h>

#include "peft/error.h"

namespace peft::cli {

static torch::Dtype parse_dtype(const std::string& s) {
  if (s == "float32" || s == "fp32") return torch::kFloat32;
  if (s == "bfloat16" || s == "bf16") return torch::kBFloat16;
  if (s == "float16" || s == "fp16") return torch::kFloat16;
  if (s == "float64" || s == "fp64") return torch::kFloat64;
  fail("option --dtype: expected float32, bfloat16, float16 or float64, got '", s, "'");
}

LoadedModel load_model_from_args(Args& a) {
  LoadOptions opts;
  opts.dtype = parse_dtype(a.get("dtype", "float32"));
  LoadedModel lm;
  lm.model = load_model(a.get("model"), opts);
  PEFT_CHECK(!a.has("adapter"), "--adapter: adapters are not supported by this build yet");
  auto m = lm.model;
  lm.forward = [m](const ModelInput& in) { return m->forward(in); };
  return lm;
}

}  // namespace peft::cli
