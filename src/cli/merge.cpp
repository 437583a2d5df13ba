// `peft merge --model DIR --adapter DIR[:SCALE]... --out DIR [--dequantize float32|bfloat16] [--safe_merge true]`:
// folds adapters into the base and writes a Hugging Face checkpoint (config.json +
// model.safetensors + tokenizer files). A quantized base (a bitsandbytes checkpoint, or
// --quantize) is merged as peft does it: dequantize, add, quantize again (a warning says the
// result carries the rounding), and written as a bitsandbytes checkpoint; --dequantize DTYPE
// turns the quantized layers into float ones first, so the merge is exact and the output a float
// checkpoint (merge_and_unload to bf16 / fp32).
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "cli/command.h"
#include "cli/model_args.h"
#include "cli/quant_args.h"
#include "models/quant_linear.h"
#include "peft/precision.h"
#include "peft/error.h"
#include "peft/io.h"

namespace peft::cli {
namespace {

int run_merge(Args& a) {
  std::string out = a.get("out");
  PEFT_CHECK(a.has("adapter"), "peft merge: give at least one --adapter DIR");
  LoadedModel lm = load_model_from_args(a);
  std::vector<std::string> known = {"model", "adapter", "out", "dtype", "dequantize", "safe_merge"};
  for (auto& k : quant_keys()) known.push_back(k);
  a.reject_unknown(known);
  torch::NoGradGuard ng;
  if (a.has("dequantize")) {
    auto dt = parse_dtype_name(a.get("dequantize"), "option --dequantize", /*allow_double=*/false);
    check_compute_dtype(dt, torch::kCPU, "option --dequantize");
    int64_t n = dequantize_model(*lm.model, dt);
    PEFT_CHECK(n > 0, "option --dequantize: the base of ", a.get("model"), " has no quantized layers");
    std::cerr << "dequantized " << n << " quantized Linear layers to " << quant::dtype_name(dt) << "\n";
  }
  // --safe_merge true (peft's safe_merge): NaN/Inf merged weights are an error, nothing written.
  auto merged = lm.peft->merge_and_unload(a.get_bool("safe_merge", false));
  merged->save_pretrained(out);
  // Tokenizer files travel with the weights so the folder is complete.
  std::string src = a.get("model");
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                        "generation_config.json", "vocab.txt", "merges.txt", "vocab.json"}) {
    auto p = join_path(src, f);
    if (std::filesystem::is_regular_file(p)) write_file_atomic(join_path(out, f), read_file(p));
  }
  std::cout << "merged " << a.get_all("adapter").size() << " adapter(s) into " << src << " -> " << out << "\n";
  return 0;
}

PEFT_REGISTER_COMMAND("merge", "fold adapters into the base and write a Hugging Face checkpoint", run_merge);

}  // namespace
}  // namespace peft::cli
