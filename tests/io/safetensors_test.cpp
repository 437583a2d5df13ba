// safetensors round trips: every dtype, __metadata__, and sharded checkpoints with their index.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include "peft/error.h"
#include "peft/io.h"
#include "test_util.h"

using namespace peft;
namespace fs = std::filesystem;

namespace {
torch::Tensor sample(torch::ScalarType dt, std::vector<int64_t> shape, int seed) {
  torch::manual_seed(seed);
  if (dt == torch::kBool) return torch::rand(shape) > 0.5;
  if (c10::isFloatingType(dt)) return (torch::randn(shape) * 100).to(dt);
  int64_t hi = dt == torch::kUInt8 ? 255 : dt == torch::kInt8 ? 127 : 30000;
  int64_t lo = dt == torch::kUInt8 ? 0 : -hi;
  return torch::randint(lo, hi, shape, torch::TensorOptions().dtype(torch::kLong)).to(dt);
}

// Bitwise equality (NaN-safe, -0.0 distinguished), as the bytes on disk.
bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  auto x = a.contiguous(), y = b.contiguous();
  if (x.numel() == 0) return true;  // (an empty tensor's data_ptr is null: no memcmp of it)
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) == 0;
}

class DtypeRoundTrip : public ::testing::TestWithParam<std::string> {};
}  // namespace

TEST_P(DtypeRoundTrip, SavesAndLoadsBitExactly) {
  const std::string name = GetParam();
  torch::ScalarType dt = dtype_from_safetensors(name);
  EXPECT_EQ(dtype_to_safetensors(dt), name);
  TensorMap w{{"a", sample(dt, {3, 5}, 1)}, {"b.scalar", sample(dt, {}, 2)}, {"c.empty", sample(dt, {0, 4}, 3)},
              {"d", sample(dt, {7}, 4)}};
  std::string path = test::temp_dir("st_dtype") + "/x.safetensors";
  save_safetensors(path, w);
  auto r = load_safetensors(path);
  ASSERT_EQ(r.size(), w.size());
  for (auto& [k, v] : w) EXPECT_TRUE(same_bytes(v, r.at(k))) << name << " " << k;
  // The header names the dtype exactly.
  std::string bytes = read_file(path);
  EXPECT_NE(bytes.find("\"dtype\":\"" + name + "\""), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, DtypeRoundTrip,
                         ::testing::Values("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"));

TEST(Safetensors, MetadataRoundTrip) {
  std::string path = test::temp_dir("st_meta") + "/m.safetensors";
  Metadata meta{{"format", "pt"}, {"producer", "peft.cpp \"test\" ✓"}, {"empty", ""}};
  save_safetensors(path, {{"w", torch::arange(6, torch::kFloat32)}}, meta);
  Metadata back;
  auto r = load_safetensors(path, &back);
  EXPECT_EQ(back, meta);
  // No metadata written: none read.
  save_safetensors(path, {{"w", torch::arange(6, torch::kFloat32)}});
  Metadata none;
  load_safetensors(path, &none);
  EXPECT_TRUE(none.empty());
}

TEST(Safetensors, ShardedCheckpointRoundTrip) {
  std::string dir = test::temp_dir("st_shard");
  TensorMap w;
  for (int i = 0; i < 10; ++i) w["layer." + std::to_string(i) + ".weight"] = sample(torch::kFloat32, {16, 16}, i);
  w["big"] = sample(torch::kFloat32, {40, 40}, 99);  // 6400 bytes: larger than a shard
  w["mask"] = sample(torch::kBool, {5}, 7);
  w["half"] = sample(torch::kBFloat16, {3, 3}, 8);
  save_checkpoint_sharded(dir, w, 3000);
  auto idx = read_json(dir + "/model.safetensors.index.json");
  ASSERT_TRUE(idx["weight_map"].is_object());
  EXPECT_EQ(idx["weight_map"].size(), w.size());
  int64_t total = 0;
  for (auto& [k, v] : w) total += v.numel() * v.element_size();
  EXPECT_EQ(idx["metadata"]["total_size"].get<int64_t>(), total);
  std::set<std::string> files;
  for (auto& [k, f] : idx["weight_map"].items()) files.insert(f.get<std::string>());
  const size_t m = files.size();
  EXPECT_GT(m, 3u);
  for (size_t i = 1; i <= m; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i, m);
    EXPECT_TRUE(files.count(name)) << name;
    EXPECT_TRUE(fs::is_regular_file(fs::path(dir) / name)) << name;
    auto shard = load_safetensors(join_path(dir, name));
    int64_t bytes = 0;
    for (auto& [k, v] : shard) bytes += v.numel() * v.element_size();
    EXPECT_TRUE(bytes <= 3000 || shard.size() == 1) << name << " holds " << bytes << " bytes";
  }
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  auto r = load_checkpoint_dir(dir);
  ASSERT_EQ(r.size(), w.size());
  for (auto& [k, v] : w) EXPECT_TRUE(same_bytes(v, r.at(k))) << k;
  for (auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos);

  // Saving again unsharded removes the old shards and index.
  save_checkpoint_sharded(dir, w, 1ull << 30);
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  size_t n = 0;
  for (auto& e : fs::directory_iterator(dir)) (void)e, ++n;
  EXPECT_EQ(n, 1u);
  r = load_checkpoint_dir(dir);
  for (auto& [k, v] : w) EXPECT_TRUE(same_bytes(v, r.at(k))) << k;
}

TEST(Safetensors, ShardIndexErrorsNameTheFile) {
  std::string dir = test::temp_dir("st_shard_bad");
  TensorMap w{{"a", torch::ones({100})}, {"b", torch::ones({100})}};
  save_checkpoint_sharded(dir, w, 400);
  auto idx = read_json(dir + "/model.safetensors.index.json");
  idx["weight_map"]["c"] = "model-00001-of-00002.safetensors";  // listed but absent
  write_json(dir + "/model.safetensors.index.json", idx);
  try {
    load_checkpoint_dir(dir);
    FAIL() << "expected an error";
  } catch (const peft::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("'c'"), std::string::npos) << m;
    EXPECT_NE(m.find("model-00001-of-00002.safetensors"), std::string::npos) << m;
  }
}
