// safetensors reader/writer (format: https://github.com/huggingface/safetensors):
// 8-byte little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
// optional "__metadata__" (string → string), then the byte buffer. Offsets are relative to
// the buffer; tensors must cover it exactly, without gaps or overlaps.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include "io/json_parse.h"
#include "peft/error.h"
#include "peft/io.h"

namespace peft {

namespace {

// Header cap as in the reference implementation (100 MB): a larger value is corruption.
constexpr uint64_t kMaxHeader = 100u * 1000 * 1000;

struct Mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (addr && addr != MAP_FAILED) munmap(addr, size);
  }
};

}  // namespace

torch::ScalarType dtype_from_safetensors(const std::string& s) {
  static const std::map<std::string, torch::ScalarType> m = {
      {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
      {"BF16", torch::kBFloat16}, {"I64", torch::kInt64}, {"I32", torch::kInt32},
      {"I16", torch::kInt16}, {"I8", torch::kInt8}, {"U8", torch::kUInt8}, {"BOOL", torch::kBool}};
  auto it = m.find(s);
  PEFT_CHECK(it != m.end(), "unsupported dtype '", s,
             "' (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
  return it->second;
}

std::string dtype_to_safetensors(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat64: return "F64";
    case torch::kFloat32: return "F32";
    case torch::kFloat16: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kInt64: return "I64";
    case torch::kInt32: return "I32";
    case torch::kInt16: return "I16";
    case torch::kInt8: return "I8";
    case torch::kUInt8: return "U8";
    case torch::kBool: return "BOOL";
    default: fail("dtype ", c10::toString(t), " cannot be stored in safetensors");
  }
}

TensorMap load_safetensors(const std::string& path, Metadata* metadata) {
  int fd = ::open(path.c_str(), O_RDONLY);
  PEFT_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail(path, ": cannot stat: ", std::strerror(errno));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    fail(path, ": truncated: ", file_size, " bytes, a safetensors file has at least 8");
  }
  auto map = std::make_shared<Mapping>();
  map->size = file_size;
  // Private, writable mapping: copy-on-write, so a stray in-place op can never modify the file.
  map->addr = mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  PEFT_CHECK(map->addr != MAP_FAILED, path, ": mmap failed: ", std::strerror(errno));
  const auto* base = static_cast<const uint8_t*>(map->addr);

  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  PEFT_CHECK(n <= kMaxHeader, path, ": header length ", n, " exceeds the 100 MB limit (corrupt file?)");
  PEFT_CHECK(n <= file_size - 8, path, ": header length ", n, " runs past the end of the file (",
             file_size, " bytes): truncated?");
  const char* hb = reinterpret_cast<const char*>(base + 8);
  nlohmann::json header = parse_json_limited(hb, hb + n, path + ": header");
  PEFT_CHECK(header.is_object(), path, ": header must be a JSON object");
  const uint64_t data_size = file_size - 8 - n;
  const uint8_t* data = base + 8 + n;

  struct Entry {
    std::string name;
    torch::ScalarType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (auto& item : header.items()) {
    // Named references, not a structured binding: C++17 lambdas (where() below) cannot capture those.
    const std::string& name = item.key();
    auto& info = item.value();
    if (name == "__metadata__") {
      PEFT_CHECK(info.is_object(), path, ": __metadata__ must be an object of strings");
      for (auto& [k, v] : info.items()) {
        PEFT_CHECK(v.is_string(), path, ": __metadata__ key '", k, "' is not a string");
        if (metadata) (*metadata)[k] = v.get<std::string>();
      }
      continue;
    }
    auto where = [&] { return path + ": tensor '" + name + "'"; };
    PEFT_CHECK(info.is_object(), where(), ": entry is not an object");
    for (auto& [k, v] : info.items())
      PEFT_CHECK(k == "dtype" || k == "shape" || k == "data_offsets", where(), ": unknown field '", k, "'");
    PEFT_CHECK(info.contains("dtype") && info["dtype"].is_string(), where(), ": missing or non-string 'dtype'");
    PEFT_CHECK(info.contains("shape") && info["shape"].is_array(), where(), ": missing or non-array 'shape'");
    PEFT_CHECK(info.contains("data_offsets") && info["data_offsets"].is_array() && info["data_offsets"].size() == 2,
               where(), ": 'data_offsets' must be [begin, end]");
    Entry e;
    e.name = name;
    e.dtype = with_context(where(), [&] { return dtype_from_safetensors(info["dtype"].get<std::string>()); });
    uint64_t numel = 1;
    for (auto& d : info["shape"]) {
      PEFT_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<int64_t>() >= 0), where(),
                 ": shape entries must be non-negative integers");
      uint64_t v = d.get<uint64_t>();
      PEFT_CHECK(v < (1ull << 40) && (v == 0 || numel <= (1ull << 50) / v), where(), ": shape too large");
      numel *= v;
      e.shape.push_back(static_cast<int64_t>(v));
    }
    for (auto& o : info["data_offsets"])
      PEFT_CHECK(o.is_number_unsigned() || (o.is_number_integer() && o.get<int64_t>() >= 0), where(),
                 ": data_offsets must be non-negative integers");
    e.begin = info["data_offsets"][0].get<uint64_t>();
    e.end = info["data_offsets"][1].get<uint64_t>();
    PEFT_CHECK(e.begin <= e.end, where(), ": data_offsets begin ", e.begin, " > end ", e.end);
    PEFT_CHECK(e.end <= data_size, where(), ": data_offsets end ", e.end, " is past the data buffer (",
               data_size, " bytes): truncated file?");
    const uint64_t expect = numel * c10::elementSize(e.dtype);
    PEFT_CHECK(e.end - e.begin == expect, where(), ": ", e.end - e.begin, " bytes for dtype ",
               info["dtype"].get<std::string>(), " and ", numel, " elements (expected ", expect, ")");
    entries.push_back(std::move(e));
  }
  // The tensors must tile the buffer: sorted by offset, each starting where the last ended.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  for (auto& e : entries) {
    PEFT_CHECK(e.begin == pos, path, ": tensor '", e.name, "' starts at byte ", e.begin, " but the previous ends at ",
               pos, e.begin < pos ? " (overlapping data)" : " (gap in data)");
    pos = e.end;
  }
  PEFT_CHECK(pos == data_size, path, ": ", data_size - pos, " trailing bytes not covered by any tensor");

  TensorMap out;
  for (auto& e : entries) {
    void* ptr = const_cast<uint8_t*>(data + e.begin);
    torch::Tensor t;
    if (reinterpret_cast<uintptr_t>(ptr) % c10::elementSize(e.dtype) != 0) {
      // Misaligned: copy instead of aliasing the mapping.
      t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
      if (e.end > e.begin) std::memcpy(t.data_ptr(), ptr, e.end - e.begin);
    } else {
      auto keep = map;
      t = torch::from_blob(ptr, e.shape, [keep](void*) {}, torch::TensorOptions().dtype(e.dtype));
    }
    out.emplace(e.name, t);
  }
  return out;
}

void save_safetensors(const std::string& path, const TensorMap& tensors, const Metadata& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = m;
  }
  std::vector<torch::Tensor> data;
  uint64_t off = 0;
  for (auto& [name, t0] : tensors) {
    PEFT_CHECK(t0.defined(), path, ": tensor '", name, "' is undefined");
    torch::Tensor t = t0.detach().to(torch::kCPU).contiguous();
    uint64_t nbytes = t.numel() * t.element_size();
    std::string dt = with_context(path + ": tensor '" + name + "'", [&] { return dtype_to_safetensors(t.scalar_type()); });
    header[name] = {{"dtype", dt}, {"shape", t.sizes().vec()}, {"data_offsets", {off, off + nbytes}}};
    off += nbytes;
    data.push_back(t);
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // pad so the buffer starts 8-byte aligned
  std::string bytes;
  bytes.reserve(8 + h.size() + off);
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  bytes += h;
  for (auto& t : data) bytes.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  write_file_atomic(path, bytes);
}

void save_checkpoint_sharded(const std::string& dir, const TensorMap& tensors, uint64_t max_shard_bytes,
                             const Metadata& metadata) {
  namespace fs = std::filesystem;
  PEFT_CHECK(max_shard_bytes > 0, dir, ": max_shard_bytes must be > 0");
  fs::create_directories(dir);
  // Greedy in name order, as transformers' shard_checkpoint: start a new shard when the next
  // tensor would overflow the current one (an oversized tensor sits alone in its shard).
  std::vector<TensorMap> shards(1);
  uint64_t cur = 0, total = 0;
  for (auto& [name, t] : tensors) {
    PEFT_CHECK(t.defined(), dir, ": tensor '", name, "' is undefined");
    uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    if (!shards.back().empty() && cur + nbytes > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back()[name] = t;
    cur += nbytes;
    total += nbytes;
  }
  const std::string single = join_path(dir, "model.safetensors");
  const std::string index = join_path(dir, "model.safetensors.index.json");
  std::set<std::string> written;
  if (shards.size() == 1) {
    save_safetensors(single, shards[0], metadata);
    written.insert("model.safetensors");
  } else {
    nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
    const size_t m = shards.size();
    for (size_t i = 0; i < m; ++i) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, m);
      save_safetensors(join_path(dir, name), shards[i], metadata);
      written.insert(name);
      for (auto& kv : shards[i]) weight_map[kv.first] = name;
    }
    nlohmann::ordered_json idx = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    write_file_atomic(index, idx.dump(2) + "\n");
    written.insert("model.safetensors.index.json");
  }
  // Remove what an earlier save left (a stale model.safetensors would shadow the index).
  for (auto& e : fs::directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    bool ours = n == "model.safetensors" || n == "model.safetensors.index.json" ||
                (n.rfind("model-", 0) == 0 && n.find("-of-") != std::string::npos && n.size() > 12 &&
                 n.compare(n.size() - 12, 12, ".safetensors") == 0);
    if (ours && !written.count(n)) fs::remove(e.path());
  }
}

TensorMap load_checkpoint_dir(const std::string& dir) {
  std::string single = join_path(dir, "model.safetensors");
  std::string index = join_path(dir, "model.safetensors.index.json");
  if (file_exists(single)) return load_safetensors(single);
  PEFT_CHECK(file_exists(index), dir, ": no model.safetensors or model.safetensors.index.json");
  nlohmann::json idx = read_json(index);
  PEFT_CHECK(idx.contains("weight_map") && idx["weight_map"].is_object(), index, ": missing object 'weight_map'");
  std::map<std::string, std::vector<std::string>> by_file;
  for (auto& [name, file] : idx["weight_map"].items()) {
    PEFT_CHECK(file.is_string(), index, ": weight_map['", name, "'] is not a string");
    std::string f = file.get<std::string>();
    PEFT_CHECK(f.find("..") == std::string::npos && !f.empty() && f[0] != '/', index, ": weight_map['", name,
               "'] = '", f, "' is not a file inside the folder");
    by_file[f].push_back(name);
  }
  TensorMap out;
  for (auto& [file, names] : by_file) {
    std::string p = join_path(dir, file);
    TensorMap shard = load_safetensors(p);
    for (auto& name : names) {
      auto it = shard.find(name);
      PEFT_CHECK(it != shard.end(), p, ": tensor '", name, "' listed in ", index, " is missing from the shard");
      out[name] = it->second;
    }
  }
  return out;
}

}  // namespace peft
