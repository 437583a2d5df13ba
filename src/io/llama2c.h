// llama2.c checkpoints (Karpathy's legacy "version 0" format, as stories260K ships):
// 7 int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
// vocab_size < 0 means an untied classifier follows), then float32 weights.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "peft/io.h"

namespace peft {

/// The llama2.c .bin behind `path` (the file itself, or the single *.bin in a folder without
/// config.json), or "" when `path` is not a llama2.c checkpoint.
std::string find_llama2c_checkpoint(const std::string& path);

/// Reads a llama2.c checkpoint as a Hugging Face LlamaForCausalLM: a config.json and weights
/// under HF names. q/k rows are permuted from llama2.c's interleaved rotary pairs to HF's
/// rotate-half layout, as transformers' convert_llama_weights_to_hf.py does.
void import_llama2c(const std::string& bin_path, nlohmann::json* config, TensorMap* weights);

}  // namespace peft
