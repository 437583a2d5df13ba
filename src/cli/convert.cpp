// `peft convert --model PATH --out DIR [--dtype D] [--max-shard-size BYTES]`: any model
// load_model() accepts (a Hugging Face folder, a llama2.c checkpoint) -> a Hugging Face folder
// (config.json, model.safetensors or shards + index, tokenizer files) that transformers and
// `peft` load alike.
// `peft quantize --model PATH --out DIR --quant nf4|fp4|int8 [--double_quant B] [--compute_dtype D]`:
// the same, with the Linear layers stored as bitsandbytes writes them through transformers
// (docs/QUANTIZATION.md): a folder that `peft` and transformers + bitsandbytes load directly.
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "cli/command.h"
#include "cli/quant_args.h"
#include "cli/recipe.h"
#include "io/llama2c.h"
#include "models/quant_linear.h"
#include "peft/error.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tokenizer.h"

namespace peft::cli {
namespace {
namespace fs = std::filesystem;

torch::Dtype parse_dtype(const std::string& s) {
  if (s == "float32" || s == "fp32") return torch::kFloat32;
  if (s == "bfloat16" || s == "bf16") return torch::kBFloat16;
  if (s == "float16" || s == "fp16") return torch::kFloat16;
  fail("option --dtype: expected float32, bfloat16 or float16, got '", s, "'");
}

const char* dtype_name(torch::Dtype d) {
  return d == torch::kBFloat16 ? "bfloat16" : d == torch::kFloat16 ? "float16" : "float32";
}

// Files of a Hugging Face folder that travel with the weights unchanged.
const char* kCopied[] = {"tokenizer.json",  "tokenizer_config.json", "special_tokens_map.json",
                         "tokenizer.model", "added_tokens.json",     "vocab.json",
                         "merges.txt",      "vocab.txt",             "generation_config.json",
                         "chat_template.jinja"};

void copy_bytes(const fs::path& from, const fs::path& to) {
  write_file_atomic(to.string(), read_file(from.string()));
}

// llama2.c: tokenizer.json from tokenizer.bin / tok*.bin beside the checkpoint, a
// tokenizer_config.json as transformers' LlamaTokenizerFast writes one (BOS added, no EOS),
// and the SentencePiece model when one sits there too.
std::vector<std::string> write_llama2c_tokenizer(const fs::path& src_dir, const std::string& out,
                                                 const nlohmann::json& config) {
  std::vector<fs::path> bins, models;
  if (fs::is_directory(src_dir))
    for (auto& e : fs::directory_iterator(src_dir)) {
      std::string n = e.path().filename().string();
      if (!e.is_regular_file() || n.rfind("tok", 0) != 0) continue;
      if (e.path().extension() == ".bin") bins.push_back(e.path());
      if (e.path().extension() == ".model") models.push_back(e.path());
    }
  std::sort(bins.begin(), bins.end());
  std::sort(models.begin(), models.end());
  std::vector<std::string> written;
  if (bins.empty()) {
    std::cerr << "peft convert: warning: no llama2.c tokenizer (tokenizer.bin / tok*.bin) in " << src_dir.string()
              << "; the output folder has no tokenizer\n";
    return written;
  }
  write_tokenizer_json_from_llama2c(bins.front().string(), out);
  written.push_back("tokenizer.json");
  nlohmann::json tc = {{"tokenizer_class", "LlamaTokenizer"}, {"bos_token", "<s>"},  {"eos_token", "</s>"},
                       {"unk_token", "<unk>"},               {"pad_token", nullptr}, {"add_bos_token", true},
                       {"add_eos_token", false},              {"clean_up_tokenization_spaces", false},
                       {"legacy", true},
                       {"model_max_length", config.value("max_position_embeddings", 2048)}};
  write_json(join_path(out, "tokenizer_config.json"), tc);
  write_json(join_path(out, "special_tokens_map.json"),
             {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}});
  written.push_back("tokenizer_config.json");
  written.push_back("special_tokens_map.json");
  if (models.size() == 1) {
    copy_bytes(models.front(), fs::path(out) / "tokenizer.model");
    written.push_back("tokenizer.model");
  }
  write_json(join_path(out, "generation_config.json"),
             {{"bos_token_id", config.value("bos_token_id", 1)}, {"eos_token_id", config.value("eos_token_id", 2)}});
  written.push_back("generation_config.json");
  return written;
}

int convert(Args& a, bool quantize) {
  std::vector<std::string> known = {"model", "out", "dtype", "max_shard_size"};
  std::optional<quant::QuantConfig> qc;
  if (quantize) {
    for (const char* k : {"quant", "double_quant", "compute_dtype"}) known.push_back(k);
    nlohmann::json r = {{"quantize", a.get("quant")}};
    const bool four = a.get("quant") != "int8";
    // Double quantization by default for the 4-bit types (QLoRA's setting: ~4.13 bits per weight).
    if (four) r["double_quant"] = parse_cli_value("double_quant", a.get("double_quant", "true"));
    else if (a.has("double_quant")) r["double_quant"] = parse_cli_value("double_quant", a.get("double_quant"));
    if (a.has("compute_dtype")) r["compute_dtype"] = a.get("compute_dtype");
    qc = pop_quant_config(r);
  }
  a.reject_unknown(known);
  std::string src = a.get("model"), out = a.get("out");
  torch::Dtype dtype = parse_dtype(a.get("dtype", "float32"));
  int64_t max_shard = a.get_int("max_shard_size", 0);
  PEFT_CHECK(max_shard >= 0, "option --max-shard-size: must be >= 0 (0 = one file), got ", max_shard);
  PEFT_CHECK(!(fs::exists(out) && fs::exists(src) && fs::equivalent(out, src)),
             "--out ", out, " is the source folder; choose another folder");

  LoadOptions opts;
  opts.dtype = dtype;
  QuantizeReport rep;
  ModelPtr m = qc ? load_model_quantized(src, *qc, opts, &rep) : load_model(src, opts);
  if (dtype != torch::kFloat32) m->config["torch_dtype"] = dtype_name(dtype);
  fs::create_directories(out);
  // As save_pretrained, but through the sharded writer, which also removes the weight files
  // of an earlier conversion into the same folder (a stale index would shadow the new file).
  TensorMap sd;
  for (auto& [k, v] : m->state_dict())
    if (!m->ignorable_key(k)) sd[k] = v;
  save_checkpoint_sharded(out, sd, max_shard > 0 ? static_cast<uint64_t>(max_shard) : UINT64_MAX);
  write_json(join_path(out, "config.json"), m->config);

  std::vector<std::string> extra;
  std::string llama2c = find_llama2c_checkpoint(src);
  if (!llama2c.empty()) {
    extra = write_llama2c_tokenizer(fs::path(llama2c).parent_path(), out, m->config);
  } else {
    for (const char* f : kCopied) {
      fs::path p = fs::path(src) / f;
      if (!fs::is_regular_file(p)) continue;
      copy_bytes(p, fs::path(out) / f);
      extra.push_back(f);
    }
  }
  int64_t n = rep.params;
  for (auto& p : m->parameters()) n += p.numel();
  if (qc) std::cout << rep.to_string() << "\n";
  std::cout << "converted " << src << " (" << m->model_type() << ", " << n << " parameters, " << dtype_name(dtype)
            << ") -> " << out << "\n  config.json, " << (max_shard > 0 ? "sharded weights" : "model.safetensors");
  for (auto& f : extra) std::cout << ", " << f;
  std::cout << "\n";
  return 0;
}

int run_convert(Args& a) { return convert(a, false); }
int run_quantize(Args& a) { return convert(a, true); }

PEFT_REGISTER_COMMAND("quantize",
                      "--model PATH --out DIR --quant nf4|fp4|int8 [--double_quant true|false] "
                      "[--compute_dtype float32|bfloat16]: write a bitsandbytes-format quantized checkpoint",
                      run_quantize);
PEFT_REGISTER_COMMAND("convert",
                      "--model PATH --out DIR [--dtype float32|bfloat16|float16] [--max-shard-size BYTES]: "
                      "write a Hugging Face folder (llama2.c checkpoints included)",
                      run_convert);

}  // namespace
}  // namespace peft::cli
