// The quantized formats against independent references: the published code tables, closed-form
// bounds, brute-force nearest values, bit-exact round trips (include/peft/quant.h).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/quant.h"
#include "test_util.h"

using namespace peft;
using namespace peft::quant;

namespace {

torch::Tensor normal(std::vector<int64_t> shape, uint64_t seed) {
  torch::manual_seed(seed);
  return torch::randn(shape) * 0.05;
}

// Per element: |x - x_hat| <= absmax(block) * bound (+ float rounding of the product).
void expect_block_bound(const torch::Tensor& x, const torch::Tensor& xh, const torch::Tensor& absmax, int64_t bs,
                        double bound) {
  auto xf = x.flatten().to(torch::kFloat64), hf = xh.flatten().to(torch::kFloat64);
  auto blk = torch::arange(xf.numel()).div(bs, "floor");
  auto am = absmax.to(torch::kFloat64).index_select(0, blk);
  // + the float32 rounding of code * absmax (2^-23 relative, twice).
  auto excess = (xf - hf).abs() - (am * (bound * (1 + 1e-6) + 2.4e-7) + 1e-9);
  EXPECT_LE(excess.max().item<double>(), 0.0);
}

}  // namespace

TEST(QuantCodes, Nf4EqualsThePublishedTableAndTheNormalQuantiles) {
  // QLoRA (arXiv:2305.14314) appendix E, the NF4 values.
  const double paper[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                            -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                            0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                            0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
  auto t = code_table_4bit(QuantType::NF4);
  ASSERT_EQ(t.numel(), 16);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(t[i].item<float>(), static_cast<float>(paper[i])) << i;
  // The construction (§3, bitsandbytes' create_normal_map with offset 0.9677083): 8 positive
  // quantiles Phi^-1 of linspace(offset, 0.5, 9)[:-1], 7 negative of linspace(offset, 0.5, 8)[:-1],
  // and 0, scaled by the largest.
  const double off = 0.9677083;
  std::vector<double> v = {0.0};
  for (int k = 0; k < 8; ++k) v.push_back(torch::special_ndtri(torch::tensor(off + (0.5 - off) * k / 8.0, torch::kFloat64)).item<double>());
  for (int k = 0; k < 7; ++k) v.push_back(-torch::special_ndtri(torch::tensor(off + (0.5 - off) * k / 7.0, torch::kFloat64)).item<double>());
  std::sort(v.begin(), v.end());
  for (int i = 0; i < 16; ++i) EXPECT_NEAR(t[i].item<float>(), v[i] / v[15], 2e-6) << i;
}

TEST(QuantCodes, Fp4EqualsTheBitLayout) {
  // Code bits s e1 e0 m: exponent 0 is 0 or 0.0625 (m), else 2^(4 - e) (1 + m/2); sign negates; / 12.
  auto t = code_table_4bit(QuantType::FP4);
  for (int c = 0; c < 16; ++c) {
    int s = c >> 3, e = (c >> 1) & 3, m = c & 1;
    double v = e == 0 ? (m ? 0.0625 : 0.0) : std::pow(2.0, -e + 4) * (m ? 1.5 : 1.0);
    if (s) v = -v;
    EXPECT_FLOAT_EQ(t[c].item<float>(), static_cast<float>(v / 12.0)) << c;
  }
  EXPECT_NEAR(max_half_gap(t), (1.0 - 8.0 / 12.0) / 2, 1e-7);
  EXPECT_NEAR(max_half_gap(code_table_4bit(QuantType::NF4)), (1.0 - 0.6961928009986877) / 2, 1e-7);  // -1 .. -0.696
}

TEST(QuantCodes, DynamicMapIsTheDocumentedTree) {
  auto m = dynamic_map_8bit();
  ASSERT_EQ(m.numel(), 256);
  auto d = m.to(torch::kFloat64);
  EXPECT_TRUE(torch::equal(std::get<0>(m.sort()), m));
  EXPECT_EQ(d[255].item<double>(), 1.0);
  // Exponent i (0..6): midpoints of linspace(0.1, 1, 2^i + 1) times 10^(i-6), both signs, plus 0.
  std::vector<double> expect = {0.0, 1.0};
  for (int i = 0; i < 7; ++i) {
    int n = (1 << i) + 1;
    for (int k = 0; k + 1 < n; ++k) {
      double a = 0.1 + 0.9 * k / (n - 1), b = 0.1 + 0.9 * (k + 1) / (n - 1);
      expect.push_back(std::pow(10.0, i - 6) * (a + b) / 2);
      expect.push_back(-std::pow(10.0, i - 6) * (a + b) / 2);
    }
  }
  std::sort(expect.begin(), expect.end());
  ASSERT_EQ(expect.size(), 256u);
  for (int i = 0; i < 256; ++i) EXPECT_NEAR(d[i].item<double>(), expect[i], 1e-6 * std::fabs(expect[i]) + 1e-12) << i;
}

TEST(Quant4bit, PackingIsBitExactHighNibbleFirst) {
  auto p = pack_nibbles(torch::tensor({1, 2, 3}, torch::kUInt8));
  ASSERT_EQ(p.sizes(), torch::IntArrayRef({2, 1}));
  EXPECT_EQ(p[0][0].item<int>(), 0x12);
  EXPECT_EQ(p[1][0].item<int>(), 0x30);  // odd count: the last low nibble is padding
  torch::manual_seed(3);
  for (int64_t n : {1, 2, 63, 64, 1001}) {
    auto c = torch::randint(0, 16, {n}, torch::kUInt8);
    EXPECT_TRUE(torch::equal(unpack_nibbles(pack_nibbles(c), n), c)) << n;
  }
}

TEST(Quant4bit, ErrorPerBlockWithinHalfTheLargestGapAndCodesAreNearest) {
  for (auto type : {QuantType::NF4, QuantType::FP4}) {
    auto x = normal({37, 29}, 11);  // 1073 values: odd, last block partial
    x[5][3] = 0.0;
    auto q = quantize_4bit(x, type, 64, false);
    q.validate("test");
    EXPECT_EQ(q.absmax.numel(), (1073 + 63) / 64);
    auto code = code_table_4bit(type);
    auto xh = dequantize_4bit(q);
    ASSERT_EQ(xh.sizes(), x.sizes());
    expect_block_bound(x, xh, q.absmax, 64, max_half_gap(code));
    // Brute force: each stored code is a nearest table entry of x / absmax.
    auto codes = unpack_nibbles(q.packed, x.numel()).to(torch::kLong);
    auto blk = torch::arange(x.numel()).div(64, "floor");
    auto r = (x.flatten().to(torch::kFloat64) / q.absmax.to(torch::kFloat64).index_select(0, blk)).unsqueeze(1);
    auto dist = (r - code.to(torch::kFloat64).unsqueeze(0)).abs();
    auto chosen = dist.gather(1, codes.unsqueeze(1)).squeeze(1);
    EXPECT_LE((chosen - std::get<0>(dist.min(1))).max().item<double>(), 1e-6) << quant_type_name(type);
    // Block absmax is the block's max |x|.
    auto pad = torch::zeros({17 * 64 - 1073});
    auto blocks = torch::cat({x.flatten(), pad}).view({17, 64}).abs().amax(1);
    EXPECT_TRUE(torch::equal(blocks, q.absmax));
  }
}

TEST(Quant4bit, FastDequantizationEqualsTheTensorOpReference) {
  for (bool dq : {false, true})
    for (auto type : {QuantType::NF4, QuantType::FP4}) {
      auto q = quantize_4bit(normal({64, 80}, 5), type, 64, dq);
      for (auto dt : {torch::kFloat32, torch::kBFloat16})
        EXPECT_TRUE(torch::equal(dequantize_4bit(q, dt), dequantize_4bit_reference(q, dt))) << dq;
    }
}

TEST(Quant4bit, DoubleQuantReconstructsAbsmaxWithinItsBound) {
  auto x = normal({300, 256}, 9);  // 1200 absmax values: 5 nested blocks, the last partial
  auto plain = quantize_4bit(x, QuantType::NF4, 64, false);
  auto q = quantize_4bit(x, QuantType::NF4, 64, true);
  q.validate("test");
  ASSERT_TRUE(q.nested);
  EXPECT_EQ(q.absmax.scalar_type(), torch::kUInt8);
  EXPECT_EQ(q.nested_absmax.numel(), (1200 + 255) / 256);
  EXPECT_NEAR(q.offset, plain.absmax.mean().item<double>(), 1e-7);
  // |absmax - absmax'| <= nested absmax of its block * half the largest gap of the dynamic map.
  auto centred = plain.absmax - static_cast<float>(q.offset);
  expect_block_bound(centred + static_cast<float>(q.offset), q.absmax_float(), q.nested_absmax, 256,
                     max_half_gap(dynamic_map_8bit()));
  // The packed 4-bit codes are those of the plain quantization (double quant changes only the constants).
  EXPECT_TRUE(torch::equal(q.packed, plain.packed));
  // The weights: |x - x_hat| <= absmax' * half gap + |absmax - absmax'|.
  auto am = plain.absmax.to(torch::kFloat64), am2 = q.absmax_float().to(torch::kFloat64);
  auto blk = torch::arange(x.numel()).div(64, "floor");
  auto bound = (am2 * max_half_gap(code_table_4bit(QuantType::NF4)) + (am - am2).abs()).index_select(0, blk);
  auto err = (x.flatten().to(torch::kFloat64) - dequantize_4bit(q).flatten().to(torch::kFloat64)).abs();
  EXPECT_LE((err - bound * (1 + 1e-6) - 1e-9).max().item<double>(), 0.0);
}

TEST(Quant4bit, BitsPerParameterWithDoubleQuant) {
  auto q = quantize_4bit(normal({1024, 4096}, 1), QuantType::NF4, 64, true);
  double bits = 8.0 * q.storage_bytes() / q.numel();
  // QLoRA §3: 4 + 8/64 + 32/(64*256) per weight, plus the two code tables and the offset once.
  double expect = 4 + 8.0 / 64 + 32.0 / (64 * 256) + 8.0 * (16 * 4 + 256 * 4 + 4) / q.numel();
  EXPECT_NEAR(bits, expect, 1e-9);
  EXPECT_LE(bits, 4.2);
  auto plain = quantize_4bit(normal({64, 64}, 1), QuantType::NF4, 64, false);
  EXPECT_NEAR(8.0 * plain.storage_bytes() / plain.numel(), 4 + 32.0 / 64 + 8.0 * 64 / 4096, 1e-9);
}

TEST(Quant8bit, BlockwiseDynamicCodesAreNearest) {
  auto x = normal({1000}, 4);
  auto q = quantize_blockwise_8bit(x, dynamic_map_8bit(), 256);
  auto blk = torch::arange(1000).div(256, "floor");
  auto r = (x.to(torch::kFloat64) / q.absmax.to(torch::kFloat64).index_select(0, blk)).unsqueeze(1);
  auto dist = (r - q.code.to(torch::kFloat64).unsqueeze(0)).abs();
  auto chosen = dist.gather(1, q.codes.to(torch::kLong).unsqueeze(1)).squeeze(1);
  EXPECT_LE((chosen - std::get<0>(dist.min(1))).max().item<double>(), 1e-6);
  expect_block_bound(x, dequantize_blockwise_8bit(q), q.absmax, 256, max_half_gap(q.code));
}

TEST(QuantInt8, RowwiseAbsmaxCodesAndBound) {
  auto w = normal({48, 80}, 7);
  w[3].zero_();
  auto q = quantize_int8_rowwise(w);
  q.validate("test");
  auto wd = w.to(torch::kFloat64);
  auto scb = wd.abs().amax(1);
  EXPECT_TRUE(torch::allclose(q.SCB.to(torch::kFloat64), scb));
  auto ideal = (wd * 127.0 / scb.clamp_min(1e-30).unsqueeze(1));
  // The stored code is the nearest integer (ties aside) of 127 w / absmax.
  EXPECT_LE((q.CB.to(torch::kFloat64) - ideal).abs().max().item<double>(), 0.5 + 1e-4);
  EXPECT_EQ(q.CB[3].abs().sum().item<int64_t>(), 0);
  EXPECT_EQ(q.CB.abs().amax(1)[0].item<int>(), 127);
  auto err = (dequantize_int8(q).to(torch::kFloat64) - wd).abs();
  EXPECT_LE((err - (scb / 254.0).unsqueeze(1) * (1 + 1e-4) - 1e-9).max().item<double>(), 0.0);
}

TEST(QuantSerialize, FourBitRoundTripIsBitExactThroughSafetensors) {
  auto dir = test::temp_dir("quant_ser");
  for (bool dq : {false, true}) {
    auto q = quantize_4bit(normal({96, 64}, 2), QuantType::FP4, 64, dq);
    TensorMap m;
    write_4bit(q, "a.weight", &m);
    EXPECT_TRUE(m.count("a.weight.quant_state.bitsandbytes__fp4"));
    EXPECT_EQ(m.count("a.weight.nested_absmax"), dq ? 1u : 0u);
    EXPECT_EQ(m.at("a.weight").sizes(), torch::IntArrayRef({96 * 64 / 2, 1}));
    save_safetensors(dir + "/q.safetensors", m);
    auto back = read_4bit(load_safetensors(dir + "/q.safetensors"), "a.weight", "q.safetensors");
    EXPECT_TRUE(torch::equal(back.packed, q.packed));
    EXPECT_TRUE(torch::equal(back.absmax, q.absmax));
    EXPECT_TRUE(torch::equal(back.code, q.code));
    EXPECT_EQ(back.shape, q.shape);
    EXPECT_EQ(back.blocksize, 64);
    if (dq) {
      EXPECT_TRUE(torch::equal(back.nested_absmax, q.nested_absmax));
      EXPECT_TRUE(torch::equal(back.nested_code, q.nested_code));
      EXPECT_EQ(static_cast<float>(back.offset), static_cast<float>(q.offset));
    }
    EXPECT_TRUE(torch::equal(dequantize_4bit(back), dequantize_4bit(q)));
    // The quant_state bytes are bitsandbytes' JSON (json.dumps separators, its key order).
    auto js = m.at("a.weight.quant_state.bitsandbytes__fp4");
    std::string text(reinterpret_cast<const char*>(js.data_ptr<uint8_t>()), js.numel());
    EXPECT_EQ(text.rfind("{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [96, 64]", 0), 0u)
        << text;
  }
}

TEST(QuantSerialize, Int8RoundTrip) {
  auto q = quantize_int8_rowwise(normal({16, 32}, 3));
  TensorMap m;
  write_int8(q, "p", &m);
  EXPECT_EQ(m.at("p.weight_format").item<int>(), 0);
  auto back = read_int8(m, "p", "f");
  EXPECT_TRUE(torch::equal(back.CB, q.CB));
  EXPECT_TRUE(torch::equal(back.SCB, q.SCB));
  m["p.weight_format"] = torch::full({}, 2, torch::kUInt8);
  try {
    read_int8(m, "p", "f.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("f.safetensors: tensor 'p.weight_format'"), std::string::npos) << e.what();
  }
}

TEST(QuantConfig, BitsAndBytesConfigRoundTripAndRefusals) {
  QuantConfig c;
  c.type = QuantType::NF4;
  c.double_quant = true;
  c.compute_dtype = torch::kBFloat16;
  auto j = c.to_json();
  EXPECT_EQ(j["quant_method"], "bitsandbytes");
  EXPECT_EQ(j["load_in_4bit"], true);
  EXPECT_EQ(j["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(j["bnb_4bit_compute_dtype"], "bfloat16");
  auto b = QuantConfig::from_json(j, "c.json");
  EXPECT_EQ(b.type, QuantType::NF4);
  EXPECT_TRUE(b.double_quant);
  EXPECT_EQ(b.compute_dtype, torch::kBFloat16);
  for (auto bad : {nlohmann::json{{"quant_method", "gptq"}, {"bits", 4}},
                   nlohmann::json{{"load_in_4bit", true}, {"load_in_8bit", true}},
                   nlohmann::json{{"load_in_4bit", true}, {"bnb_4bit_quant_type", "int4"}},
                   nlohmann::json{{"load_in_4bit", true}, {"bnb_4bit_quant_storage", "bfloat16"}}}) {
    try {
      QuantConfig::from_json(bad, "c.json");
      FAIL() << bad.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("c.json: field 'quantization_config'"), std::string::npos) << e.what();
    }
  }
}
