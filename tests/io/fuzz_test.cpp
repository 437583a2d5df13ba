// Robustness: thousands of deterministic hostile inputs for the three file readers that take
// untrusted bytes: load_safetensors, config.json (through load_model) and adapter_config.json.
// Every case must load or throw peft::Error: never crash, never another exception type, never
// read outside the file (run under -DPEFT_ASAN=ON to check the last part).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "io/adapter_config.h"
#include "peft/io.h"
#include "peft/model.h"
#include "test_util.h"

using namespace peft;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

// splitmix64: deterministic on every platform (std distributions are not).
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return n ? static_cast<size_t>(next() % n) : 0; }
};

struct Tally {
  int loaded = 0, rejected = 0;
  int total() const { return loaded + rejected; }
};

// Runs one case; anything but success or peft::Error fails the test with the case's label.
template <class Fn>
void run_case(Tally& t, const std::string& label, Fn&& fn) {
  try {
    fn();
    ++t.loaded;
  } catch (const peft::Error&) {
    ++t.rejected;
  } catch (const std::exception& e) {
    ADD_FAILURE() << label << ": threw a non-peft exception: " << e.what();
  } catch (...) {
    ADD_FAILURE() << label << ": threw a non-exception";
  }
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string nested(int depth, const std::string& inner = "1") {
  return std::string(depth, '[') + inner + std::string(depth, ']');
}

// Loads and reads every byte of every tensor (ASan / the MMU catch an out-of-range view).
uint64_t load_and_touch(const std::string& path) {
  Metadata meta;
  uint64_t sum = 0;
  for (auto& [name, t] : load_safetensors(path, &meta)) {
    auto c = t.contiguous();
    const auto* p = static_cast<const uint8_t*>(c.data_ptr());
    for (int64_t i = 0, n = c.numel() * c.element_size(); i < n; ++i) sum += p[i];
  }
  return sum;
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file from a header text and a data buffer (the header length is computed).
std::string st_file(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

// Hostile JSON values for any field.
std::vector<std::string> hostile_values() {
  return {"-1", "0", "1", "2", "3", "7", "64", "2147483648", "9007199254740993", "9223372036854775807",
          "-9223372036854775808", "18446744073709551615", "1e300", "-1e300", "1.5", "-0.0", "\"64\"", "\"\"",
          "\"gelu_new\"", "\"\\u0000\"", "null", "true", "false", "[]", "[64]", "[-1, 2]", "{}", "{\"a\": 1}",
          nested(50), nested(127), nested(129), "\"F32\"", "[0, 0]", "[[1, 2], [3]]"};
}

}  // namespace

TEST(Fuzz, Safetensors) {
  std::string dir = test::temp_dir("fuzz_st");
  std::string path = dir + "/x.safetensors";
  // A valid base file with several dtypes, a scalar, an empty tensor and metadata.
  TensorMap base{{"a.f32", torch::randn({4, 4})},
                 {"b.bf16", torch::randn({3}).to(torch::kBFloat16)},
                 {"c.i64", torch::arange(4, torch::kLong).view({2, 2})},
                 {"d.bool", torch::tensor({true, false, true, true, false})},
                 {"e.u8", torch::empty({0}, torch::kUInt8)},
                 {"f.f64", torch::tensor(3.5, torch::kFloat64)},
                 {"g.i16", torch::arange(3, torch::kShort)}};
  save_safetensors(path, base, {{"format", "pt"}});
  const std::string good = read_file(path);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | static_cast<uint8_t>(good[i]);
  const std::string good_header = good.substr(8, hlen), good_data = good.substr(8 + hlen);
  Tally t;
  Rng rng(20240601);
  auto try_bytes = [&](const std::string& bytes, const std::string& label) {
    write_bytes(path, bytes);
    run_case(t, label, [&] { load_and_touch(path); });
  };

  // 1. Truncation at every offset, and a few extensions.
  for (size_t n = 0; n < good.size(); ++n) try_bytes(good.substr(0, n), "truncate " + std::to_string(n));
  for (size_t extra : {1, 7, 8, 4096}) try_bytes(good + std::string(extra, '\x01'), "extend");

  // 2. Bit flips and random bytes, two thirds of them in the header.
  for (int i = 0; i < 4000; ++i) {
    std::string b = good;
    int flips = 1 + static_cast<int>(rng.below(3));
    for (int k = 0; k < flips; ++k) {
      size_t pos = rng.below(3) ? rng.below(8 + hlen) : rng.below(b.size());
      if (rng.below(2))
        b[pos] = static_cast<char>(b[pos] ^ (1 << rng.below(8)));
      else
        b[pos] = static_cast<char>(rng.below(256));
    }
    try_bytes(b, "flip case " + std::to_string(i));
  }

  // 3. Header length field: huge, off by one, past the end.
  for (uint64_t n : {uint64_t(0), uint64_t(1), hlen - 1, hlen + 1, uint64_t(good.size()), uint64_t(100000001),
                     uint64_t(1) << 32, uint64_t(1) << 63, ~uint64_t(0), ~uint64_t(0) - 7})
    try_bytes(le64(n) + good.substr(8), "header length " + std::to_string(n));

  // 4. Structured hostile headers: one field of one entry replaced by a hostile value.
  const json hj = json::parse(good_header);
  const std::vector<std::string> names = [&] {
    std::vector<std::string> v;
    for (auto& [k, _] : hj.items()) v.push_back(k);
    return v;
  }();
  const std::vector<std::string> fields = {"dtype", "shape", "data_offsets", "extra"};
  std::vector<std::string> values = hostile_values();
  for (std::string v : {"\"I32\"", "\"F16\"", "\"U8\"", "\"BOOL\"", "\"F8_E4M3\"", "\"f32\"", "\"F32 \"",
                        "[4294967296, 4294967296]", "[1099511627776]", "[0, 1099511627776]",
                        "[2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,"
                        "2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2]",
                        "[3037000500, 3037000500]", "[0, 18446744073709551615]", "[18446744073709551615, 0]",
                        "[5, 3]", "[0]", "[0, 1, 2]", "[1.5, 8]", "[0, 64]", "[64, 128]", "[60, 124]", "[0, 65]"})
    values.push_back(v);
  for (const auto& name : names) {
    for (const auto& field : fields) {
      for (const auto& v : values) {
        json h = hj;
        if (name == "__metadata__") {
          h[name][field] = json::parse(v, nullptr, /*allow_exceptions=*/false);
          if (h[name][field].is_discarded()) continue;
        } else {
          // Splice the raw text in (keeps exact numbers such as 2^64 - 1).
          h[name][field] = "@@";
        }
        std::string text = h.dump();
        auto at = text.find("\"@@\"");
        if (at != std::string::npos) text.replace(at, 4, v);
        try_bytes(st_file(text, good_data), "entry " + name + "." + field + " = " + v);
      }
    }
  }
  // Whole entries / roots replaced.
  for (const auto& v : values) {
    try_bytes(st_file(v, good_data), "root = " + v);
    for (const auto& name : names) {
      json h = hj;
      h[name] = "@@";
      std::string text = h.dump();
      text.replace(text.find("\"@@\""), 4, v);
      try_bytes(st_file(text, good_data), "entry " + name + " = " + v);
    }
  }
  // Random offset rewrites: overlaps, gaps, out of range, misaligned.
  for (int i = 0; i < 2000; ++i) {
    json h = hj;
    uint64_t size = good_data.size();
    int changes = 1 + static_cast<int>(rng.below(3));
    for (int k = 0; k < changes; ++k) {
      const std::string& name = names[rng.below(names.size())];
      if (name == "__metadata__") continue;
      uint64_t b = rng.below(size + 3), e = rng.below(size + 3);
      if (rng.below(4) == 0) e = b + rng.below(9);
      h[name]["data_offsets"] = json::array({b, e});
      if (rng.below(3) == 0) h[name]["shape"] = json::array({rng.below(20)});
    }
    try_bytes(st_file(h.dump(), good_data), "offsets case " + std::to_string(i));
  }
  // Deep nesting in the header, as a tensor entry and in metadata.
  for (int depth : {100, 127, 128, 129, 200, 10000, 200000}) {
    try_bytes(st_file(nested(depth), ""), "nested root " + std::to_string(depth));
    try_bytes(st_file("{\"__metadata__\": {\"a\": " + nested(depth) + "}}", ""), "nested metadata");
    try_bytes(st_file("{\"x\": {\"dtype\": \"F32\", \"shape\": " + nested(depth) + ", \"data_offsets\": [0, 0]}}", ""),
              "nested shape");
  }
  try_bytes(st_file(std::string(300000, '{'), ""), "unclosed braces");
  try_bytes(st_file("{\"a\xff\": {}}", ""), "invalid utf-8 name");

  // The untouched file still loads, bit-exactly.
  write_bytes(path, good);
  auto back = load_safetensors(path);
  for (auto& [k, v] : base) EXPECT_TRUE(torch::equal(v, back.at(k))) << k;
  EXPECT_GE(t.total(), 8000);
  EXPECT_GT(t.loaded, 0);
  EXPECT_GT(t.rejected, 0);
  std::cout << "[ fuzz ] safetensors: " << t.total() << " cases, " << t.loaded << " loaded, " << t.rejected
            << " rejected\n";
}

TEST(Fuzz, ConfigJson) {
  Tally t;
  Rng rng(77);
  const std::vector<std::string> values = hostile_values();
  for (const char* family : {"gpt2", "llama"}) {
    std::string src = test::source_path(std::string("tests/fixtures/hf/models/") + family);
    std::string dir = test::temp_dir(std::string("fuzz_cfg_") + family);
    fs::copy_file(src + "/model.safetensors", dir + "/model.safetensors");
    const std::string good = read_file(src + "/config.json");
    const json cfg = json::parse(good);
    auto try_text = [&](const std::string& text, const std::string& label) {
      write_bytes(dir + "/config.json", text);
      run_case(t, std::string(family) + " " + label, [&] {
        auto m = load_model(dir);
        ModelInput mi;
        mi.input_ids = torch::tensor({{1, 2, 3}}, torch::kLong);
        torch::NoGradGuard ng;
        m->forward(mi);
      });
    };
    // Every key replaced by every hostile value, and deleted.
    for (auto& [key, _] : cfg.items()) {
      for (const auto& v : values) {
        json c = cfg;
        c[key] = "@@";
        std::string text = c.dump(2);
        text.replace(text.find("\"@@\""), 4, v);
        try_text(text, key + " = " + v);
      }
      json c = cfg;
      c.erase(key);
      try_text(c.dump(), "without " + key);
    }
    for (const char* arch : {"GPT2LMHeadModel", "LlamaForCausalLM", "GPT2ForSequenceClassification", "Bogus"}) {
      json c = cfg;
      c["architectures"] = {arch};
      try_text(c.dump(), std::string("architecture ") + arch);
    }
    for (const auto& v : values) try_text(v, "root = " + v);
    for (int depth : {128, 129, 100000}) try_text("{\"a\": " + nested(depth) + "}", "nested");
    // Truncations and byte flips of the text.
    for (size_t n = 0; n < good.size(); n += 5) try_text(good.substr(0, n), "truncate " + std::to_string(n));
    for (int i = 0; i < 250; ++i) {
      std::string b = good;
      size_t pos = rng.below(b.size());
      b[pos] = static_cast<char>(rng.below(2) ? b[pos] ^ (1 << rng.below(8)) : rng.below(256));
      try_text(b, "flip case " + std::to_string(i));
    }
  }
  EXPECT_GE(t.total(), 2500);
  EXPECT_GT(t.loaded, 0);
  std::cout << "[ fuzz ] config.json: " << t.total() << " cases, " << t.loaded << " loaded, " << t.rejected
            << " rejected\n";
}

TEST(Fuzz, AdapterConfigJson) {
  Tally t;
  Rng rng(99);
  const std::vector<std::string> values = hostile_values();
  std::string path = test::temp_dir("fuzz_adapter") + "/adapter_config.json";
  auto try_text = [&](const std::string& text, const std::string& label) {
    write_bytes(path, text);
    run_case(t, label, [&] { read_adapter_config_file(path); });
  };
  for (const char* base : {"tests/fixtures/peft/adapters/llama", "tests/fixtures/peft/adapters/bert_cls"}) {
    for (auto& e : fs::directory_iterator(test::source_path(base))) {
      const std::string good = read_file((e.path() / "adapter_config.json").string());
      const json cfg = json::parse(good);
      std::string who = e.path().filename().string();
      EXPECT_NO_THROW(read_adapter_config_file((e.path() / "adapter_config.json").string())) << who;
      for (auto& [key, _] : cfg.items()) {
        for (size_t i = 0; i < values.size(); i += 2 + rng.below(4)) {
          json c = cfg;
          c[key] = "@@";
          std::string text = c.dump();
          text.replace(text.find("\"@@\""), 4, values[i]);
          try_text(text, who + " " + key + " = " + values[i]);
        }
        json c = cfg;
        c.erase(key);
        try_text(c.dump(), who + " without " + key);
      }
      for (int i = 0; i < 30; ++i) try_text(good.substr(0, rng.below(good.size())), who + " truncated");
      for (int i = 0; i < 30; ++i) {
        std::string b = good;
        size_t pos = rng.below(b.size());
        b[pos] = static_cast<char>(b[pos] ^ (1 << rng.below(8)));
        try_text(b, who + " flip");
      }
    }
  }
  for (const auto& v : values) try_text(v, "root = " + v);
  try_text("{\"peft_type\": \"LORA\", \"target_modules\": " + nested(100000, "\"q\"") + "}", "nested");
  EXPECT_GE(t.total(), 2000);
  std::cout << "[ fuzz ] adapter_config.json: " << t.total() << " cases, " << t.loaded << " loaded, " << t.rejected
            << " rejected\n";
}
