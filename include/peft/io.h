// File I/O shared by every layer: safetensors (read memory-mapped, write atomically),
// JSON files, and atomic writes (temporary file, then rename: nothing saved is lost).
//
//   peft::TensorMap w = peft::load_safetensors("model.safetensors");
//   peft::save_safetensors("out.safetensors", w, {{"format", "pt"}});
//   nlohmann::json cfg = peft::read_json("config.json");
#pragma once
#include <torch/types.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace peft {

/// Name → tensor, ordered by name (safetensors files are written in this order).
using TensorMap = std::map<std::string, torch::Tensor>;
using Metadata = std::map<std::string, std::string>;

/// Reads a .safetensors file. The tensors are views of a read-only memory map that stays
/// alive while any of them does (clone() before writing into one). Every violation of the
/// format (header size, JSON, dtype, shape × dtype ≠ byte length, offsets out of range,
/// overlapping or non-contiguous data) throws peft::Error naming the file and the tensor.
TensorMap load_safetensors(const std::string& path, Metadata* metadata = nullptr);

/// Writes tensors (made contiguous, on CPU) atomically: `path`.tmp, fsync, then rename.
void save_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata = {});

/// Writes `tensors` into `dir` as Hugging Face sharded weights: model-00001-of-0000M.safetensors
/// ... (tensors in name order, a new shard whenever the next tensor would push the current one
/// past `max_shard_bytes`; a larger tensor gets a shard of its own) and
/// model.safetensors.index.json ({"metadata": {"total_size"}, "weight_map"}). A single shard is
/// written as model.safetensors, as transformers does. Every file is written atomically; stale
/// model*.safetensors files of an earlier save in `dir` are removed afterwards.
void save_checkpoint_sharded(const std::string& dir, const TensorMap& tensors, uint64_t max_shard_bytes,
                             const Metadata& metadata = {{"format", "pt"}});

/// Loads the weights of a Hugging Face folder: model.safetensors, or the shards listed by
/// model.safetensors.index.json ("weight_map").
TensorMap load_checkpoint_dir(const std::string& dir);

/// Parses a JSON file; errors name the file (and line/column for syntax errors).
nlohmann::json read_json(const std::string& path);
/// Writes JSON (indent 2) atomically.
void write_json(const std::string& path, const nlohmann::json& j);

/// Whole file as bytes; errors name the file.
std::string read_file(const std::string& path);
/// Writes bytes to `path` atomically (temporary file in the same folder, fsync, rename).
/// A full disk or any short write throws peft::Error and leaves `path` untouched.
void write_file_atomic(const std::string& path, const std::string& bytes);

bool file_exists(const std::string& path);
std::string join_path(const std::string& a, const std::string& b);

/// safetensors dtype string ("F32", "BF16", ...) ↔ torch dtype; unknown → peft::Error.
torch::ScalarType dtype_from_safetensors(const std::string& s);
std::string dtype_to_safetensors(torch::ScalarType t);

}  // namespace peft
