// LoftQ (tuners/loftq.h): the normal maps against their quantile definition, the round trip
// against a brute-force nearest search, the decomposition against Eckart-Young, and the LoRA init
// through PeftModel: base rewritten, saved, reloaded on the float and on a quantized base.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>

#include "models/quant_linear.h"
#include "peft/error.h"
#include "peft/quant.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/loftq.h"

using namespace peft;

namespace {

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }
// The quantile by bisection on the CDF (independent of erfinv).
double normal_ppf(double p) {
  double lo = -10, hi = 10;
  for (int i = 0; i < 200; ++i) {
    double mid = 0.5 * (lo + hi);
    (normal_cdf(mid) < p ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

std::string llama_fixture() { return test::source_path("tests/fixtures/hf/models/llama"); }

ModelInput ids_input() {
  ModelInput in;
  in.input_ids = torch::tensor({{1, 5, 9, 33, 70, 2}}, torch::kLong);
  return in;
}

Linear& base_of(PeftModel& pm, const std::string& path) {
  for (auto& kv : pm.tuner_layers())
    if (kv.first == path) return kv.second->base_linear();
  throw std::runtime_error("no tuner layer at " + path);
}
TunerLayer& layer_at(PeftModel& pm, const std::string& path) {
  for (auto& kv : pm.tuner_layers())
    if (kv.first == path) return *kv.second;
  throw std::runtime_error("no tuner layer at " + path);
}

const double kOffset = 0.9677083;

}  // namespace

TEST(LoftQ, FourBitNormalMapIsTheNF4Table) {
  auto nf4 = std::get<0>(quant::code_table_4bit(quant::QuantType::NF4).sort());
  EXPECT_TRUE(torch::allclose(normal_float_map(4), nf4, 0, 1e-6)) << normal_float_map(4) << nf4;
}

TEST(LoftQ, NormalMapEntriesAreTheQuantilesOfTheConstruction) {
  for (int64_t bits : {2, 8}) {
    auto t = normal_float_map(bits).to(torch::kFloat64);
    const int64_t n = int64_t(1) << bits;
    ASSERT_EQ(t.numel(), n);
    auto v = t.accessor<double, 1>();
    EXPECT_DOUBLE_EQ(v[n - 1], 1.0);
    EXPECT_NEAR(v[0], -1.0, 1e-6);
    const double scale = normal_ppf(kOffset);
    std::vector<double> pos, neg;
    int zeros = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (i) EXPECT_LT(v[i - 1], v[i]) << bits << " bits, entry " << i;
      if (v[i] == 0) ++zeros;
      else (v[i] > 0 ? pos : neg).push_back(normal_cdf(std::abs(v[i]) * scale));
    }
    EXPECT_EQ(zeros, 1);
    // One more positive value than negative ones: n/2 probabilities offset..0.5 (exclusive) in
    // n/2 steps, and n/2 - 1 on the negative side.
    ASSERT_EQ(static_cast<int64_t>(pos.size()), n / 2);
    ASSERT_EQ(static_cast<int64_t>(neg.size()), n / 2 - 1);
    std::sort(pos.begin(), pos.end(), std::greater<double>());
    std::sort(neg.begin(), neg.end(), std::greater<double>());
    for (int64_t j = 0; j < n / 2; ++j) EXPECT_NEAR(pos[j], kOffset - j * (kOffset - 0.5) / (n / 2), 2e-6) << bits << " " << j;
    for (int64_t j = 0; j + 1 < n / 2; ++j)
      EXPECT_NEAR(neg[j], kOffset - j * (kOffset - 0.5) / (n / 2 - 1), 2e-6) << bits << " " << j;
  }
}

TEST(LoftQ, RoundTripPicksTheNearestEntryOfEachBlock) {
  torch::manual_seed(5);
  auto W = torch::randn({6, 128});
  W[2].zero_();  // all-zero blocks stay zero
  for (int64_t bits : {2, 8}) {
    auto got = normal_float_round_trip(W, bits);
    auto table = normal_float_map(bits);
    auto t = table.accessor<float, 1>();
    auto flat = W.contiguous().view({-1});
    auto w = flat.accessor<float, 1>();
    auto g = got.contiguous().view({-1});
    auto ga = g.accessor<float, 1>();
    for (int64_t b = 0; b < flat.numel() / 64; ++b) {
      float mx = 0;
      for (int64_t i = 0; i < 64; ++i) mx = std::max(mx, std::abs(w[b * 64 + i]));
      for (int64_t i = 0; i < 64; ++i) {
        float x = mx > 0 ? w[b * 64 + i] / mx : 0.f;
        int64_t best = 0;
        for (int64_t k = 1; k < table.numel(); ++k)
          if (std::abs(x - t[k]) < std::abs(x - t[best])) best = k;
        ASSERT_EQ(ga[b * 64 + i], t[best] * mx) << bits << " bits, element " << b * 64 + i;
      }
    }
  }
  try {
    normal_float_round_trip(torch::randn({3, 5}), 2);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blocks of 64"), std::string::npos) << e.what();
  }
}

TEST(LoftQ, OneIterationQuantizesWAndFitsTheResidualAtRankR) {
  torch::manual_seed(7);
  auto W = 0.05 * torch::randn({48, 64});
  const int64_t r = 4;
  auto lq = loftq_decompose(W, 4, r, 1);
  auto deq = quant::dequantize_4bit(quant::quantize_4bit(W, quant::QuantType::NF4, 64, false));
  EXPECT_TRUE(torch::equal(lq.base, deq));
  ASSERT_EQ(lq.A.sizes(), torch::IntArrayRef({r, 64}));
  ASSERT_EQ(lq.B.sizes(), torch::IntArrayRef({48, r}));
  // Eckart-Young: the best rank-r fit leaves the tail of the residual's singular values.
  auto R = (W - deq).to(torch::kFloat64);
  auto S = torch::linalg_svdvals(R);
  double tail = S.slice(0, r).pow(2).sum().sqrt().item<double>();
  double err = (R - lq.B.to(torch::kFloat64).matmul(lq.A.to(torch::kFloat64))).norm().item<double>();
  EXPECT_NEAR(err, tail, 1e-4 * tail);
  // Balanced factors: ||A||_F^2 = ||B||_F^2 = sum of the top-r singular values.
  double top = S.slice(0, 0, r).sum().item<double>();
  EXPECT_NEAR(lq.A.pow(2).sum().item<double>(), top, 1e-4 * top);
  EXPECT_NEAR(lq.B.pow(2).sum().item<double>(), top, 1e-4 * top);
}

TEST(LoftQ, FitsTheWeightBetterThanQuantizationAloneAtEveryBitWidth) {
  torch::manual_seed(11);
  // A weight with a strong low-rank part, where the paper's alternation pays off.
  auto W = 0.3 * torch::randn({64, 8}).matmul(torch::randn({8, 128})) / std::sqrt(8.0) + 0.02 * torch::randn({64, 128});
  for (int64_t bits : {2, 4, 8}) {
    auto q = bits == 4 ? quant::dequantize_4bit(quant::quantize_4bit(W, quant::QuantType::NF4, 64, false))
                       : normal_float_round_trip(W, bits);
    double q_err = (W - q).norm().item<double>();
    for (int64_t T : {1, 5}) {
      auto lq = loftq_decompose(W, bits, 8, T);
      double err = (W - lq.base - lq.B.matmul(lq.A)).norm().item<double>();
      EXPECT_LT(err, q_err) << bits << " bits, " << T << " iterations";
    }
    // Without the factors (loading an adapter) the base is the same.
    EXPECT_TRUE(torch::equal(loftq_decompose(W, bits, 8, 3, false).base, loftq_decompose(W, bits, 8, 3).base)) << bits;
  }
}

TEST(LoftQ, LoraInitRewritesTheBaseAndReloadsOnFloatAndQuantizedBases) {
  const std::string q0 = "model.layers.0.self_attn.q_proj";
  auto W0 = load_model(llama_fixture())->named_parameters()[q0 + ".weight"].clone();
  auto pm = std::make_shared<PeftModel>(load_model(llama_fixture()));
  auto cfg = method_config("loftq", {{"r", 4}, {"lora_alpha", 4}, {"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}}});
  EXPECT_TRUE(init_rewrites_base(cfg));
  EXPECT_FALSE(init_rewrites_base(method_config("pissa")));
  pm->add_adapter("default", cfg);
  auto lq = loftq_decompose(W0, 4, 4, 1);
  auto& t = layer_at(*pm, q0);
  EXPECT_TRUE(torch::equal(base_of(*pm, q0).weight, lq.base));
  EXPECT_TRUE(torch::allclose(t.param("default", "lora_B.weight").matmul(t.param("default", "lora_A.weight")),
                              lq.B.matmul(lq.A), 1e-6, 1e-7));
  // alpha == r: the initial layer is closer to W0 than the quantized weight alone.
  auto W_init = base_of(*pm, q0).weight + t.delta_weight("default");
  EXPECT_LT((W_init - W0).norm().item<double>(), (lq.base - W0).norm().item<double>());
  {
    torch::NoGradGuard ng;  // as if trained
    torch::manual_seed(2);
    for (auto& kv : pm->named_trainable_parameters()) kv.second.add_(0.01 * torch::randn_like(kv.second));
  }
  auto y = pm->forward(ids_input()).logits;
  auto dir = test::temp_dir("loftq_adapter");
  pm->save_adapter(dir);
  auto saved = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(saved["init_lora_weights"], "loftq");
  EXPECT_EQ(saved["loftq_config"]["loftq_bits"], 4);
  // On the float model the base is rewritten again (peft re-runs LoftQ on load).
  auto pf = std::make_shared<PeftModel>(load_model(llama_fixture()));
  pf->load_adapter(dir);
  EXPECT_TRUE(torch::equal(base_of(*pf, q0).weight, lq.base));
  EXPECT_TRUE(torch::allclose(pf->forward(ids_input()).logits, y, 1e-6, 1e-6));
  // On a base quantized with nf4 (blocks of 64, no double quantization) the stored weight is
  // LoftQ's one-iteration base already.
  quant::QuantConfig qc;
  qc.type = quant::QuantType::NF4;
  auto qm = load_model(llama_fixture());
  quantize_model(*qm, qc);
  auto pq = std::make_shared<PeftModel>(qm);
  pq->load_adapter(dir);
  auto* ql = as_quantized(&base_of(*pq, q0));
  ASSERT_NE(ql, nullptr);
  EXPECT_TRUE(torch::equal(ql->dequantized_weight(torch::kFloat32), lq.base));
  EXPECT_TRUE(torch::allclose(pq->forward(ids_input()).logits, y, 1e-5, 1e-5));
  // A new LoftQ adapter cannot start from the quantized weight.
  try {
    pq->add_adapter("other", cfg);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("LoftQ needs the float base weight"), std::string::npos) << e.what();
  }
}
