// `peft merge --model DIR --adapter DIR[:SCALE]... --out DIR`: folds adapters into the base and
// writes a plain Hugging Face checkpoint (config.json + model.safetensors + tokenizer files).
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "cli/command.h"
#include "cli/model_args.h"
#include "peft/error.h"
#include "peft/io.h"

namespace peft::cli {
namespace {

int run_merge(Args& a) {
  std::string out = a.get("out");
  PEFT_CHECK(a.has("adapter"), "peft merge: give at least one --adapter DIR");
  LoadedModel lm = load_model_from_args(a);
  a.reject_unknown({"model", "adapter", "out", "dtype"});
  torch::NoGradGuard ng;
  auto merged = lm.peft->merge_and_unload();
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
