// `peft inspect PATH [--json]`: what a checkpoint holds, without building the model.
//   model folder (config.json + safetensors) or llama2.c .bin: model_type, architecture, key
//     config values, tensors (name, dtype, shape), parameter count;
//   adapter folder (adapter_config.json + adapter_model.safetensors, Python peft's format):
//     peft_type, r / alpha / target_modules and the other fields, tensors, parameter count;
//   a single .safetensors file: its __metadata__ and tensors.
#include <torch/torch.h>

#include <filesystem>
#include <iomanip>
#include <iostream>

#include "cli/inspect.h"

#include "cli/command.h"
#include "io/adapter_config.h"
#include "io/llama2c.h"
#include "peft/error.h"
#include "peft/io.h"

namespace peft::cli {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

// Config keys worth a line, in display order (the names differ by family).
const char* kModelKeys[] = {"hidden_size",       "n_embd",       "d_model",
                            "num_hidden_layers", "n_layer",      "num_layers",
                            "num_decoder_layers", "num_attention_heads", "n_head",
                            "num_heads",         "num_key_value_heads", "head_dim",
                            "intermediate_size", "n_inner",      "d_ff",
                            "vocab_size",        "max_position_embeddings", "n_positions",
                            "hidden_act",        "activation_function", "feed_forward_proj",
                            "rms_norm_eps",      "layer_norm_epsilon", "layer_norm_eps",
                            "rope_theta",        "tie_word_embeddings", "torch_dtype"};
// Adapter fields shown first; every other non-empty field follows.
const char* kAdapterKeys[] = {"peft_type",  "task_type",         "base_model_name_or_path", "r",
                              "lora_alpha", "alpha",             "target_modules",          "modules_to_save",
                              "use_rslora", "use_dora",          "init_r",                  "target_r",
                              "num_virtual_tokens", "token_dim", "num_layers",              "feedforward_modules"};

json tensor_table(const TensorMap& tensors, int64_t* n_params, int64_t* n_bytes) {
  json arr = json::array();
  *n_params = *n_bytes = 0;
  for (auto& [name, t] : tensors) {
    arr.push_back({{"name", name},
                   {"dtype", dtype_to_safetensors(t.scalar_type())},
                   {"shape", t.sizes().vec()},
                   {"numel", t.numel()}});
    *n_params += t.numel();
    *n_bytes += t.numel() * t.element_size();
  }
  return arr;
}

bool empty_value(const nlohmann::json& v) {
  return v.is_null() || ((v.is_object() || v.is_array() || v.is_string()) && v.empty());
}

json inspect_model(const std::string& path) {
  json out = {{"kind", "model"}, {"path", path}};
  nlohmann::json config;
  TensorMap weights;
  std::string bin = find_llama2c_checkpoint(path);
  if (!bin.empty()) {
    import_llama2c(bin, &config, &weights);
    out["format"] = "llama2.c";
    out["file"] = bin;
  } else {
    std::string cfg_path = join_path(path, "config.json");
    PEFT_CHECK(fs::is_regular_file(cfg_path), path,
               ": not a model folder, adapter folder, llama2.c checkpoint or .safetensors file "
               "(no config.json or adapter_config.json)");
    config = read_json(cfg_path);
    PEFT_CHECK(config.is_object(), cfg_path, ": not a JSON object");
    weights = load_checkpoint_dir(path);
    out["format"] = file_exists(join_path(path, "model.safetensors")) ? "safetensors" : "sharded safetensors";
  }
  auto str_of = [&](const char* k) -> std::string {
    return config.contains(k) && config[k].is_string() ? config[k].get<std::string>() : "";
  };
  out["model_type"] = str_of("model_type");
  std::string arch;
  if (config.contains("architectures") && config["architectures"].is_array() && !config["architectures"].empty() &&
      config["architectures"][0].is_string())
    arch = config["architectures"][0].get<std::string>();
  out["architecture"] = arch;
  json cfg = json::object();
  for (const char* k : kModelKeys)
    if (config.contains(k) && !config[k].is_null()) cfg[k] = config[k];
  out["config"] = cfg;
  int64_t n = 0, bytes = 0;
  out["tensors"] = tensor_table(weights, &n, &bytes);
  out["num_parameters"] = n;
  out["num_bytes"] = bytes;
  return out;
}

json inspect_adapter(const std::string& dir) {
  std::string cfg_path = join_path(dir, "adapter_config.json");
  nlohmann::json config = read_adapter_config_file(cfg_path);
  std::string weights_path = join_path(dir, "adapter_model.safetensors");
  PEFT_CHECK(file_exists(weights_path), dir, ": no adapter_model.safetensors",
             file_exists(join_path(dir, "adapter_model.bin"))
                 ? " (adapter_model.bin is a pickle: re-save it with safe_serialization=True)"
                 : "");
  Metadata meta;
  TensorMap weights = load_safetensors(weights_path, &meta);
  json out = {{"kind", "adapter"}, {"path", dir}, {"peft_type", config["peft_type"]}};
  json cfg = json::object();
  for (const char* k : kAdapterKeys)
    if (config.contains(k) && !empty_value(config[k])) cfg[k] = config[k];
  for (auto& [k, v] : config.items())
    if (!cfg.contains(k) && !empty_value(v)) cfg[k] = v;
  out["config"] = cfg;
  int64_t n = 0, bytes = 0;
  out["tensors"] = tensor_table(weights, &n, &bytes);
  out["num_parameters"] = n;
  out["num_bytes"] = bytes;
  out["metadata"] = meta;
  return out;
}

json inspect_file(const std::string& path) {
  Metadata meta;
  TensorMap weights = load_safetensors(path, &meta);
  json out = {{"kind", "safetensors"}, {"path", path}, {"metadata", meta}};
  int64_t n = 0, bytes = 0;
  out["tensors"] = tensor_table(weights, &n, &bytes);
  out["num_parameters"] = n;
  out["num_bytes"] = bytes;
  return out;
}

std::string shape_str(const json& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i].get<int64_t>());
  return s + "]";
}

std::string value_str(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

void print_text(const json& r) {
  std::cout << r["kind"].get<std::string>() << ": " << r["path"].get<std::string>() << "\n";
  if (r["kind"] == "model") {
    std::cout << "  format:       " << r["format"].get<std::string>() << "\n"
              << "  model_type:   " << r["model_type"].get<std::string>() << "\n"
              << "  architecture: " << r["architecture"].get<std::string>() << "\n";
  }
  if (r.contains("config")) {
    std::cout << "config:\n";
    for (auto& [k, v] : r["config"].items()) std::cout << "  " << std::left << std::setw(26) << k << value_str(v) << "\n";
  }
  if (r.contains("metadata") && !r["metadata"].empty()) {
    std::cout << "metadata:\n";
    for (auto& [k, v] : r["metadata"].items()) std::cout << "  " << std::left << std::setw(26) << k << value_str(v) << "\n";
  }
  size_t w = 4;
  for (auto& t : r["tensors"]) w = std::max(w, t["name"].get<std::string>().size());
  std::cout << "tensors (" << r["tensors"].size() << "):\n  " << std::left << std::setw(w + 2) << "name"
            << std::setw(6) << "dtype" << "shape\n";
  for (auto& t : r["tensors"])
    std::cout << "  " << std::left << std::setw(w + 2) << t["name"].get<std::string>() << std::setw(6)
              << t["dtype"].get<std::string>() << shape_str(t["shape"]) << "\n";
  std::cout << "parameters: " << r["num_parameters"].get<int64_t>() << " (" << r["num_bytes"].get<int64_t>()
            << " bytes)\n";
}

int run_inspect(Args& a) {
  a.reject_unknown({"json"});
  std::string path;
  bool as_json = false;
  std::string jv = a.get("json", "false");
  if (a.has("json") && a.positionals().empty() && jv != "true" && jv != "false") {
    path = jv;  // `inspect --json PATH`: the parser took PATH as the flag's value
    as_json = true;
  } else {
    path = a.positional(0, "PATH (model folder, adapter folder, llama2.c .bin or .safetensors file)");
    as_json = a.get_bool("json", false);
  }
  json r = inspect(path);
  if (as_json)
    std::cout << r.dump(2) << "\n";
  else
    print_text(r);
  return 0;
}

}  // namespace

json inspect(const std::string& path) {
  PEFT_CHECK(fs::exists(path), path, ": no such file or folder");
  if (fs::is_directory(path) && file_exists(join_path(path, "adapter_config.json"))) return inspect_adapter(path);
  if (fs::is_regular_file(path) && fs::path(path).extension() == ".safetensors") return inspect_file(path);
  return inspect_model(path);
}

namespace {
PEFT_REGISTER_COMMAND("inspect", "PATH [--json]: config, tensors and parameter count of a model, adapter or file",
                      run_inspect);

}  // namespace
}  // namespace peft::cli
