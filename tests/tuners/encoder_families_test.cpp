// One method of every family (and more) on the encoder (BERT, RoBERTa) and encoder-decoder (T5,
// T5 v1.1 with its gated wi_0/wi_1 FFN) fixtures, placed through the models' roles:
//   additive        Houlsby, Pfeiffer and parallel bottleneck adapters, Compacter, Hadamard
//   partial         BitFit, LN tuning, layer freezing, sparse deltas, FISH mask (calibrated)
//   reparameterized DoRA, VeRA, LoHa (LoRA and IA3 on T5 are in encoder_test.cpp)
//   hybrid          MAM (prefix + parallel adapter), S4 (layer groups), UniPELT (gated LoRA +
//                   gated adapter + prefix)
//   unified         COMPOSITE (LoRA + Pfeiffer adapter), ProPETL, AdaMix
// For each: identity at init (bit for bit, or within float32 rounding where the method rescales
// the weight, DoRA; for the prefix hybrids, equal to prefix tuning alone with the same prefix,
// since their other parts start at zero), closed-form trainable counts, save -> load bit-exact,
// merge == unmerged output (or merge() refused for the non-linear methods), and float64
// finite-difference gradients. Then every registered method (but LST, done elsewhere) is added
// with its defaults to each model, and the methods that cannot apply raise a clear peft::Error.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <ostream>

#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using peft::test::fixture_input;
using peft::test::fixture_peft_model;
using peft::test::logits_of;
using peft::test::max_diff;
using peft::test::source_path;

namespace {

/// The fixture's sizes, read from its config.json (BERT-style and T5 field names).
struct Sizes {
  int64_t H = 0, F = 0, L = 0, Ld = 0, inner = 0, labels = 0;
  bool t5 = false, roberta = false, gated = false, untied_head = false;
};

Sizes sizes_of(const std::string& model) {
  auto c = read_json(source_path("tests/fixtures/hf/models/" + model + "/config.json"));
  Sizes s;
  s.t5 = c["model_type"] == "t5";
  s.roberta = c["model_type"] == "roberta";
  if (s.t5) {
    s.H = c["d_model"].get<int64_t>();
    s.F = c["d_ff"].get<int64_t>();
    s.L = c["num_layers"].get<int64_t>();
    s.Ld = c["num_decoder_layers"].get<int64_t>();
    s.inner = c["num_heads"].get<int64_t>() * c["d_kv"].get<int64_t>();
    s.gated = c.value("is_gated_act", false);
    s.untied_head = !c.value("tie_word_embeddings", true);
  } else {
    s.H = c["hidden_size"].get<int64_t>();
    s.F = c["intermediate_size"].get<int64_t>();
    s.L = c["num_hidden_layers"].get<int64_t>();
    s.inner = s.H;
    s.labels = c.contains("id2label") ? (int64_t)c["id2label"].size() : c.value("num_labels", 2);
  }
  return s;
}

/// The classification head that SEQ_CLS adapters train through modules_to_save (none on T5).
int64_t head_params(const Sizes& s) {
  if (s.t5) return 0;
  const int64_t out = s.H * s.labels + s.labels;
  return s.roberta ? s.H * s.H + s.H + out : out;  // RoBERTa: dense + out_proj; BERT: one Linear
}

/// Sites of "after the attention output projection" (Houlsby's first adapter, Hadamard):
/// BERT one per layer; T5 encoder self-attention, decoder self- and cross-attention.
int64_t attn_out_sites(const Sizes& s) { return s.t5 ? s.L + 2 * s.Ld : s.L; }
/// FFN sites (Pfeiffer, parallel adapter, AdaMix): one per block.
int64_t ffn_sites(const Sizes& s) { return s.t5 ? s.L + s.Ld : s.L; }
/// One bottleneck adapter d -> b -> d with biases.
int64_t adapter_params(int64_t d, int64_t b) { return (b * d + b) + (d * b + d); }

using peft::test::perturb;

struct Case {
  std::string model, method;
  nlohmann::json overrides;
  bool mergeable;
  // Expected trainable count (-1: not checked here; the method's own test file has it).
  std::function<int64_t(const Sizes&)> count;
  // Identity at init: "exact" (bit for bit), "rounding" (within float32 rounding: DoRA divides
  // by the weight norm it multiplies back), or the adapter-state key of a random prefix whose
  // prefix-tuning-alone output the adapter must reproduce at init (MAM, UniPELT).
  std::string identity = "exact";
  int64_t prefix_tokens = 0;
};

std::string case_name(const Case& c) {
  std::string n = c.model + "_" + c.method;
  for (auto& ch : n)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = ch == '+' ? 'p' : '_';
  return n;
}
void PrintTo(const Case& c, std::ostream* os) { *os << case_name(c); }

void add(PeftModel& pm, const Case& c, const ModelInput& in) {
  pm.add_adapter("default", method_config(c.method, c.overrides));
  // FISH: the mask comes from the empirical Fisher of calibration batches (here the fixture batch).
  if (pm.needs_calibration()) pm.calibrate([&] { return pm.forward(in).loss; });
}

class EncoderFamilies : public ::testing::TestWithParam<Case> {};

TEST_P(EncoderFamilies, IdentityCountSaveLoadMerge) {
  const auto c = GetParam();
  const auto s = sizes_of(c.model);
  auto in = fixture_input(c.model);
  auto pm = fixture_peft_model(c.model);
  auto base = logits_of(*pm, in);
  add(*pm, c, in);

  auto rep = pm->trainable_report();
  if (c.count) EXPECT_EQ(rep.trainable, c.count(s)) << rep.to_string();

  auto init = logits_of(*pm, in);
  if (c.identity == "exact") {
    EXPECT_TRUE(torch::equal(init, base)) << max_diff(init, base);
  } else if (c.identity == "rounding") {
    EXPECT_LT(max_diff(init, base), 1e-5 * std::max(1.0, base.abs().max().item<double>()));
  } else {
    // The random prefix acts from the start; everything else starts at zero, so the adapter
    // equals prefix tuning alone (no reparameterisation, as in the method) with that prefix.
    EXPECT_GT(max_diff(init, base), 1e-5);
    auto sd = pm->adapter_state_dict("default");
    ASSERT_TRUE(sd.count(c.identity)) << c.identity;
    // UniPELT's prefix is gated: the reference is gated prefix tuning with the same gate.
    const auto ns = c.identity.substr(0, c.identity.size() - std::string("prompt_embeddings").size());
    const bool gate = sd.count(ns + "prefix_gate.weight") > 0;
    auto prefix_only = fixture_peft_model(c.model);
    prefix_only->add_adapter("default",
                             {{"peft_type", "PREFIX_TUNING"},
                              {"num_virtual_tokens", c.prefix_tokens},
                              {"prefix_gate", gate},
                              {"prefix_layout", "paper"}});  // as the hybrids (no effect on encoders)
    auto tensors = prefix_only->adapter_state_dict("default");  // with its copy of the head (SEQ_CLS)
    tensors["prompt_embeddings"] = sd.at(c.identity);
    if (gate)
      for (auto k : {"prefix_gate.weight", "prefix_gate.bias"}) tensors[k] = sd.at(ns + k);
    prefix_only->load_adapter_state_dict("default", tensors, "test");
    auto want = logits_of(*prefix_only, in);
    EXPECT_TRUE(torch::equal(init, want)) << max_diff(init, want);
  }

  // Random adapter weights act; disabling gives the base back.
  perturb(*pm, 0.2);
  auto out = logits_of(*pm, in);
  EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
  EXPECT_GT(max_diff(out, base), 1e-4);
  pm->disable_adapters();
  EXPECT_TRUE(torch::equal(logits_of(*pm, in), base));
  pm->disable_adapters(false);

  peft::test::expect_save_load_bit_exact(*pm, c.model, in, "encfam_" + case_name(c));

  if (c.mergeable) {
    // float32 rounding relative to the logits' size (T5 v1.1's untied head is not rescaled).
    const double tol = 1e-5 * std::max(1.0, out.abs().max().item<double>());
    pm->merge();
    EXPECT_LT(max_diff(logits_of(*pm, in), out), tol);
    pm->unmerge();
    EXPECT_LT(max_diff(logits_of(*pm, in), out), tol);
  } else {
    EXPECT_THROW(pm->merge(), Error);
    EXPECT_TRUE(torch::equal(logits_of(*pm, in), out));
  }
}

TEST_P(EncoderFamilies, GradientsMatchFiniteDifferences) {
  const auto c = GetParam();
  auto in = fixture_input(c.model);
  auto pm = fixture_peft_model(c.model, torch::kFloat64);
  add(*pm, c, in);
  pm->to(torch::kFloat64);
  perturb(*pm, 0.2);
  // Every third tensor keeps the test quick (the methods' own tests check them all on llama).
  int every = 3;
  std::function<bool(const std::string&)> skip;
  if (c.method == "dora") {
    // DoRA treats the weight norm as a constant in backprop (Liu et al. 2024, sec. 4.3), so only
    // the magnitude's gradient is the full derivative (as in lora_test).
    every = 1;
    skip = [](const std::string& n) { return n.find("lora_magnitude_vector") == std::string::npos; };
  }
  if (c.method == "propetl") {
    // The binary masks pass gradients to their scores with the straight-through estimator
    // (Zeng et al. 2023; see src/tuners/propetl.cpp), not the derivative of the thresholded forward.
    skip = [](const std::string& n) { return n.find("propetl_scores") != std::string::npos; };
  }
  peft::test::expect_gradients_match_finite_differences(*pm, in, case_name(c), every, skip);
}

const char* kModels[] = {"bert_cls", "roberta_cls", "t5", "t5_v1_1"};

std::vector<Case> cases() {
  using J = nlohmann::json;
  const J none = J::object();
  std::vector<Case> v;
  for (std::string m : kModels) {
    const bool t5 = m.rfind("t5", 0) == 0;
    // b = H / 16 (the bottleneck's reduction_factor).
    auto houlsby = [](const Sizes& s) {
      return (attn_out_sites(s) + ffn_sites(s)) * adapter_params(s.H, s.H / 16);
    };
    auto pfeiffer = [](const Sizes& s) { return ffn_sites(s) * adapter_params(s.H, s.H / 16); };
    v.push_back({m, "houlsby", none, false, houlsby});
    v.push_back({m, "pfeiffer", none, false, pfeiffer});
    // He et al.'s parallel adapter reads the FFN input and adds to the FFN output (before the
    // residual): H -> b -> H once per block.
    v.push_back({m, "parallel-adapter", none, false, pfeiffer});
    // Compacter with k = H / 8 (phm_dim 4 must divide k and the widths).
    // Per Houlsby site (sec. 3: W = Σ_i A_i ⊗ (s_i t_i^T), n = 4, rank 1): the down projection
    // k x H holds s [n, k/n, 1], t [n, 1, H/n] and a bias k; the up projection H x k holds
    // s [n, H/n, 1], t [n, 1, k/n] and a bias H; plus the two shared rule sets A, 2 n^3.
    v.push_back({m, "compacter", {{"reduction_factor", 8}}, false, [](const Sizes& s) {
                   const int64_t n = 4, k = s.H / 8;
                   const int64_t site = (k + s.H + k) + (s.H + k + s.H);
                   return (attn_out_sites(s) + ffn_sites(s)) * site + 2 * n * n * n;
                 }});
    // Hadamard: w ⊙ h + b on every attention output (weight and bias of width H). T5's output
    // projections have no bias to fold the adapter's bias into: merge() is refused there.
    v.push_back({m, "hadamard", none, !t5, [](const Sizes& s) { return attn_out_sites(s) * 2 * s.H; }});

    // ---- partial
    if (!t5) {
      // Every bias outside the head: embeddings LN; per layer q, k, v, attention output (H
      // each), its LN (H), intermediate (F), output.dense (H), its LN (H); BERT's pooler (H).
      v.push_back({m, "bitfit", none, true, [](const Sizes& s) {
                     return s.H + s.L * (7 * s.H + s.F) + (s.roberta ? 0 : s.H) + head_params(s);
                   }});
    } else {
      // T5 has no biases: added zero-initialised ones train (not mergeable; plain bitfit is
      // refused, see EveryMethodApplies). Sum of the out widths of every Linear but the head.
      v.push_back({m, "bitfit", {{"add_missing_biases", true}}, false, [](const Sizes& s) {
                     const int64_t ffn = (s.gated ? 2 : 1) * s.F + s.H;
                     const int64_t attn = 3 * s.inner + s.H;
                     return s.L * (attn + ffn) + s.Ld * (2 * attn + ffn);
                   }});
    }
    // LN tuning: BERT's LayerNorms (weight + bias): embeddings + 2 per layer; T5's RMSNorms
    // (weight only): 2 per encoder block + 3 per decoder block + the two final norms.
    v.push_back({m, "ln-tuning", none, true, [](const Sizes& s) {
                   return s.t5 ? (2 * s.L + 3 * s.Ld + 2) * s.H : (1 + 2 * s.L) * 2 * s.H + head_params(s);
                 }});
    // Layer freezing, last block trainable (encoder and decoder alike on T5).
    v.push_back({m, "layer-freeze", none, true, [](const Sizes& s) {
                   if (!s.t5)
                     return 4 * (s.H * s.H + s.H) + (s.H * s.F + s.F) + (s.F * s.H + s.H) + 2 * 2 * s.H + head_params(s);
                   const int64_t attn = 4 * s.H * s.inner, ffn = (s.gated ? 3 : 2) * s.H * s.F;
                   return (attn + ffn + 2 * s.H) + (2 * attn + ffn + 3 * s.H);
                 }});
    // Weight deltas on every attention and FFN projection: k = round(0.02 * numel) entries per
    // Linear (sparse-delta) or globally (FISH); the head trains through modules_to_save.
    auto weights = [](const Sizes& s) {  // numel of each targeted Linear, encoder then decoder
      std::vector<int64_t> w;
      const int64_t ffn_in = s.gated ? 2 : 1;
      for (int64_t l = 0; l < s.L; ++l) {
        for (int i = 0; i < 4; ++i) w.push_back(s.H * s.inner);
        for (int64_t i = 0; i < ffn_in + 1; ++i) w.push_back(s.H * s.F);
      }
      for (int64_t l = 0; l < s.Ld; ++l) {
        for (int i = 0; i < 8; ++i) w.push_back(s.H * s.inner);
        for (int64_t i = 0; i < ffn_in + 1; ++i) w.push_back(s.H * s.F);
      }
      return w;
    };
    v.push_back({m, "sparse-delta", {{"density", 0.02}}, true, [weights](const Sizes& s) {
                   int64_t k = 0;
                   for (auto n : weights(s)) k += std::llround(0.02 * n);
                   return k + head_params(s);
                 }});
    v.push_back({m, "fish-mask", {{"density", 0.02}, {"fisher_batches", 1}}, true, [weights](const Sizes& s) {
                   int64_t total = 0;
                   for (auto n : weights(s)) total += n;
                   return std::llround(0.02 * total) + head_params(s);
                 }});

    // ---- reparameterized (r = 8 on q and v: both self- and cross-attention on T5)
    auto qv = [](const Sizes& s) { return s.t5 ? 2 * (s.L + 2 * s.Ld) : 2 * s.L; };
    v.push_back({m, "dora", none, true, [qv](const Sizes& s) {
                   return qv(s) * (8 * (s.H + s.inner) + s.inner);  // A, B and the magnitude
                 },
                 "rounding"});
    // VeRA (r = 32): frozen shared A, B; trainable lambda_d [out] and lambda_b [r] per module.
    v.push_back({m, "vera", none, true, [qv](const Sizes& s) { return qv(s) * (s.inner + 32); }});
    v.push_back({m, "loha", none, true, [qv](const Sizes& s) { return qv(s) * 2 * 8 * (s.H + s.inner); }});

    // ---- hybrid
    // MAM: P = 4 key/value prefixes per layer (T5: for the encoder, the decoder and the cross-
    // attention, over max(L, Ld) layers, as encoder_test's prefix tuning) + parallel adapters.
    v.push_back({m, "mam", {{"num_virtual_tokens", 4}}, false, [pfeiffer](const Sizes& s) {
                   const int64_t P = 4;
                   const int64_t prefix = s.t5 ? 3 * P * std::max(s.L, s.Ld) * 2 * s.inner : P * s.L * 2 * s.H;
                   return prefix + pfeiffer(s);
                 },
                 "prompt_embeddings", 4});
    // S4's spindle split (1:2:2:1) of 2 layers: G1 and G4 are empty, G2 = {0} (adapter + prefix)
    // and G3 = {1} (adapter + prefix + BitFit): Houlsby adapters on every block, 10 prefix tokens
    // on every layer, and the biases of block 1 (encoder and decoder alike; T5's zero-initialised
    // added ones). Components in order BitFit, adapter, prefix; the prefix is random at init.
    v.push_back({m, "s4", none, false, [houlsby](const Sizes& s) {
                   const int64_t P = 10;
                   const int64_t prefix = s.t5 ? 3 * P * std::max(s.L, s.Ld) * 2 * s.inner : P * s.L * 2 * s.H;
                   const int64_t attn = 3 * s.inner + s.H, ffn = (s.gated ? 2 : 1) * s.F + s.H;
                   const int64_t bitfit = s.t5 ? (attn + ffn) + (2 * attn + ffn) : 7 * s.H + s.F;
                   return houlsby(s) + prefix + bitfit;
                 },
                 "components.2.prompt_embeddings", 10});
    // UniPELT: gated LoRA (r = 8; gate W_g [1, in] + b) on q, v; a gated Pfeiffer adapter (gate
    // [1, H] + b); 10 prefix tokens with a gate [1, H] + b per attention layer (T5: 3 sites).
    v.push_back({m, "unipelt", none, false, [qv, pfeiffer](const Sizes& s) {
                   const int64_t P = 10;
                   const int64_t prefix = s.t5 ? 3 * P * std::max(s.L, s.Ld) * 2 * s.inner : P * s.L * 2 * s.H;
                   const int64_t prefix_gates = (s.t5 ? 3 * std::max(s.L, s.Ld) : s.L) * (s.H + 1);
                   return qv(s) * (8 * (s.H + s.inner) + s.H + 1) + pfeiffer(s) + ffn_sites(s) * (s.H + 1) + prefix +
                          prefix_gates;
                 },
                 "components.2.prompt_embeddings", 10});

    // ---- unified
    J comps = J::array({J{{"peft_type", "LORA"}, {"r", 4}}, J{{"peft_type", "BOTTLENECK"}, {"adapter_type", "pfeiffer"}}});
    v.push_back({m, "composite", {{"components", comps}}, false, [qv, pfeiffer](const Sizes& s) {
                   return qv(s) * 4 * (s.H + s.inner) + pfeiffer(s);
                 }});
    // ProPETL (r = 8): one prototype LoRA pair per module name (q, v), plus a score per
    // prototype entry for every module using it.
    v.push_back({m, "propetl", none, true, [qv](const Sizes& s) {
                   const int64_t pair = 8 * (s.H + s.inner);
                   return 2 * pair + qv(s) * pair;
                 }});
    // AdaMix: 4 copies of a Pfeiffer-placed adapter per FFN.
    v.push_back({m, "adamix", none, false, [](const Sizes& s) {
                   return ffn_sites(s) * 4 * adapter_params(s.H, s.H / 16);
                 }});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(All, EncoderFamilies, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return case_name(info.param); });

// Every registered method (LST aside: ladder side-tuning on encoders is tested elsewhere) is
// added with its defaults to every encoder fixture and runs a forward; the ones that cannot
// apply say why with a peft::Error.
TEST(EncoderFamiliesAll, EveryMethodAppliesThroughRoles) {
  for (std::string m : kModels) {
    const bool t5 = m.rfind("t5", 0) == 0;
    auto in = fixture_input(m);
    for (auto& method : method_names()) {
      if (method == "lst") continue;
      nlohmann::json o = nlohmann::json::object();
      if (method == "composite") o["components"] = {{{"peft_type", "LORA"}}};
      if (method.rfind("compacter", 0) == 0) o["reduction_factor"] = 8;  // phm_dim 4 | H / 8
      SCOPED_TRACE(m + " " + method);
      auto pm = fixture_peft_model(m);
      if (method == "pfeiffer-inv") {
        // MAD-X's invertible adapter needs a decoder's final norm for its inverse: refused, naming it.
        try {
          pm->add_adapter("default", method_config(method, o));
          ADD_FAILURE() << "pfeiffer-inv on an encoder should be refused";
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("norm.final"), std::string::npos) << e.what();
        }
        EXPECT_TRUE(pm->adapters().empty());
        continue;
      }
      if (method == "bitfit" && t5) {
        // T5's Linears have no biases: refused, naming the way out.
        try {
          pm->add_adapter("default", method_config(method, o));
          ADD_FAILURE() << "bitfit on T5 should be refused";
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("add_missing_biases"), std::string::npos) << e.what();
        }
        continue;
      }
      pm->add_adapter("default", method_config(method, o));
      EXPECT_FALSE(pm->adapter("default").targeted.empty() && pm->trainable_report().trainable == 0);
      if (pm->needs_calibration()) pm->calibrate([&] { return pm->forward(in).loss; });
      auto out = logits_of(*pm, in);
      EXPECT_TRUE(torch::isfinite(out).all().item<bool>());
    }
  }
}

// Where the adapters land, by module name: the parallel adapter (and MAM's) wraps the whole FFN
// (BERT: the parameter-free `mlp` view of intermediate -> output.dense; T5: DenseReluDense, the
// gated one on v1.1); FFN-output placements (Pfeiffer, AdaMix) skip BERT's attention.output.dense,
// which the FFN's "output.dense" suffix also names; Houlsby reaches T5's cross-attention.
TEST(EncoderFamiliesAll, PlacementsThroughRoles) {
  auto targeted = [](const std::string& model, const std::string& method) {
    auto pm = fixture_peft_model(model);
    pm->add_adapter("default", method_config(method));
    auto t = pm->adapter("default").targeted;
    std::sort(t.begin(), t.end());
    return t;
  };
  using V = std::vector<std::string>;
  const std::string b = "bert.encoder.layer.", r = "roberta.encoder.layer.";
  EXPECT_EQ(targeted("bert_cls", "parallel-adapter"), (V{b + "0.mlp", b + "1.mlp"}));
  EXPECT_EQ(targeted("roberta_cls", "mam"), (V{r + "0.mlp", r + "1.mlp"}));
  EXPECT_EQ(targeted("bert_cls", "pfeiffer"), (V{b + "0.output.dense", b + "1.output.dense"}));
  EXPECT_EQ(targeted("bert_cls", "adamix"), (V{b + "0.output.dense", b + "1.output.dense"}));
  EXPECT_EQ(targeted("bert_cls", "houlsby"), (V{b + "0.attention.output.dense", b + "0.output.dense",
                                                b + "1.attention.output.dense", b + "1.output.dense"}));
  const V t5_ffn = {"decoder.block.0.layer.2.DenseReluDense", "decoder.block.1.layer.2.DenseReluDense",
                    "encoder.block.0.layer.1.DenseReluDense", "encoder.block.1.layer.1.DenseReluDense"};
  EXPECT_EQ(targeted("t5_v1_1", "parallel-adapter"), t5_ffn);
  EXPECT_EQ(targeted("t5", "mam"), t5_ffn);
  auto h = targeted("t5", "houlsby");
  EXPECT_EQ(h.size(), 10u);
  EXPECT_TRUE(std::count(h.begin(), h.end(), "decoder.block.1.layer.1.EncDecAttention.o"));
  EXPECT_TRUE(std::count(h.begin(), h.end(), "encoder.block.0.layer.1.DenseReluDense.wo"));

  // The view has no parameters of its own: modules_to_save refuses it, naming it.
  auto pm = fixture_peft_model("bert_cls");
  try {
    pm->add_adapter("default", method_config("lora", {{"modules_to_save", {"mlp"}}}));
    ADD_FAILURE() << "modules_to_save on a parameter-free module should be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bert.encoder.layer.0.mlp"), std::string::npos) << e.what();
  }
}

// BERT's parallel adapter computes FFN(x) + s · W_up relu(W_down x + b_d) + b_u (He et al. 2022,
// eq. 8, s = 4) at its `mlp` view, with FFN(x) = output.dense(intermediate(x)) taken from the
// model's own modules; BertLayer adds the residual and applies the LayerNorm after it.
TEST(EncoderFamiliesAll, BertParallelAdapterWrapsTheFfn) {
  auto pm = fixture_peft_model("bert_cls");
  pm->add_adapter("default", method_config("parallel-adapter", {{"init_weights", false}}));  // W_up != 0
  auto mods = pm->model->named_modules();
  auto layer = [&](const std::string& n) {
    auto l = std::dynamic_pointer_cast<Layer>(mods[n]);
    EXPECT_TRUE(l) << n;
    return l;
  };
  const std::string p = "bert.encoder.layer.1.";
  auto mlp = layer(p + "mlp"), inter = layer(p + "intermediate"), dense = layer(p + "output.dense");
  auto sd = pm->adapter_state_dict("default");
  const std::string k = "base_model.model." + p + "mlp.";
  namespace F = torch::nn::functional;
  torch::NoGradGuard ng;
  auto x = torch::randn({2, 3, 64});
  auto z = torch::relu(F::linear(x, sd.at(k + "adapter_down.weight"), sd.at(k + "adapter_down.bias")));
  auto want = dense->forward(inter->forward(x)) + 4.0 * F::linear(z, sd.at(k + "adapter_up.weight"), sd.at(k + "adapter_up.bias"));
  auto got = mlp->forward(x);
  EXPECT_TRUE(torch::allclose(got, want, 1e-5, 1e-6)) << max_diff(got, want);
}

}  // namespace
