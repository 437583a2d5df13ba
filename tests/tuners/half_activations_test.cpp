// Half activations (docs/PRECISION.md): LoRA on a bfloat16 Llama keeps the residual stream,
// attention and the MLP in bfloat16 as transformers does, the adapter's products in float32 as
// peft's autocast_adapter_dtype. Reference: tests/fixtures/half/llama_lora_bf16.safetensors,
// transformers 4.37's bfloat16 Llama forward under peft 0.13's LoRA Linear written out in
// PyTorch (make_llama_bf16_reference.py) — logits, loss and the LoRA factors' gradients. Also:
// which adapters keep float32 activations, the zero-B identity, and mixed-adapter batches.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "peft/io.h"
#include "models/checkpoint.h"
#include "peft/precision.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

namespace peft::test {
namespace {

const std::string kPeftLora = "tests/fixtures/peft/adapters/llama/lora";

TensorMap half_reference() { return load_safetensors(source_path("tests/fixtures/half/llama_lora_bf16.safetensors")); }

PeftModelPtr bf16_llama_with_peft_lora() {
  auto pm = fixture_peft_model("llama", torch::kBFloat16);
  pm->load_adapter(source_path(kPeftLora), "default", /*trainable=*/true);
  pm->eval();
  return pm;
}

}  // namespace

// The forward is transformers' bfloat16 recipe: same dtypes at every step, so the logits agree
// to a few bfloat16 roundings (2^-8 relative each) at the logits' scale, much closer than the
// float32-activation forward peft.cpp ran before (each of its activations carries 16 more bits).
TEST(HalfActivations, LoraOnBf16LlamaMatchesTransformersRecipe) {
  auto ref = half_reference();
  auto pm = bf16_llama_with_peft_lora();
  auto in = fixture_input("llama");
  ModelOutput out;
  {
    torch::NoGradGuard ng;
    in.output_hidden_states = true;
    out = pm->forward(in);
  }
  EXPECT_EQ(out.logits.scalar_type(), torch::kBFloat16);
  ASSERT_FALSE(out.hidden_states.empty());
  for (auto& h : out.hidden_states) EXPECT_EQ(h.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(out.loss.scalar_type(), torch::kFloat32);  // the loss on float32 logits, as LlamaForCausalLM
  const auto& r = ref.at("logits");
  const double scale = r.abs().max().item<double>();
  const double err = max_diff(out.logits.to(torch::kFloat32), r);
  // The same adapter on the same bfloat16 weights with float32 activations: the wrapped model
  // (its LoRA layers in place) called directly, without PeftModel's HalfActivations guard.
  torch::Tensor f32_logits;
  {
    torch::NoGradGuard ng;
    const HalfActivations off(false);
    f32_logits = pm->model->forward(fixture_input("llama")).logits;
  }
  ASSERT_EQ(f32_logits.scalar_type(), torch::kFloat32);
  const double err32 = max_diff(f32_logits, r);
  std::cerr << "half activations vs transformers' bf16 recipe: max |err| " << err << " (float32 activations: " << err32
            << ", logits up to " << scale << ")\n";
  EXPECT_LE(err, 4 * std::ldexp(1.0, -8) * scale);
  EXPECT_LT(err, 0.25 * err32);
  EXPECT_NEAR(out.loss.item<double>(), ref.at("loss").item<double>(), 1e-3 * ref.at("loss").item<double>());
}

// Gradients of the float32 LoRA factors through the bfloat16 stream: close to the reference's
// (the same graph; the products' accumulation order may differ), each within 2% of its norm.
TEST(HalfActivations, LoraGradientsMatchTransformersRecipe) {
  auto ref = half_reference();
  auto pm = bf16_llama_with_peft_lora();
  pm->train();
  auto loss = pm->forward(fixture_input("llama")).loss;
  loss.backward();
  int64_t checked = 0;
  for (auto& [name, p] : pm->named_trainable_parameters()) {
    EXPECT_EQ(p.scalar_type(), torch::kFloat32) << name;
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32) << name;
    // "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" -> the saved key
    std::string key = name;
    auto d = key.find(".default");
    if (d != std::string::npos) key.erase(d, 8);
    const std::string pre = "base_model.model.";
    if (key.rfind(pre, 0) == 0) key = key.substr(pre.size());
    ASSERT_TRUE(ref.count("grad." + key)) << key;
    const auto& g = ref.at("grad." + key);
    const double rel = (p.grad() - g).norm().item<double>() / g.norm().item<double>();
    EXPECT_LT(rel, 0.02) << key;
    ++checked;
  }
  EXPECT_EQ(checked, 8);
}

// B = 0 (peft's default init): the adapter adds exactly nothing, so the forward equals the
// plain bfloat16 model's under the same guard bit for bit (the float32 round trip of the sum
// is exact).
TEST(HalfActivations, ZeroLoraIsTheIdentityInBfloat16) {
  auto pm = fixture_peft_model("llama", torch::kBFloat16);
  pm->add_adapter("default", {{"peft_type", "LORA"}, {"r", 4}, {"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj",
                                                                                  "gate_proj", "up_proj", "down_proj"}}});
  pm->eval();
  auto in = fixture_input("llama");
  torch::NoGradGuard ng;
  auto with = pm->forward(in).logits;
  ASSERT_EQ(with.scalar_type(), torch::kBFloat16);
  torch::Tensor plain;
  {
    const HalfActivations on(true);
    pm->disable_adapters(true);
    plain = pm->model->forward(in).logits;
    pm->disable_adapters(false);
  }
  ASSERT_EQ(plain.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(with, plain));
}

// Which adapters keep the stream in bfloat16: LoRA (and rsLoRA), AdaLoRA, LoHa, VeRA do; DoRA
// (it normalises the base weight), input adapters (prompt tuning) and layers that do not declare
// it (IA3, bottleneck adapters) keep float32 activations, as does a disabled adapter.
TEST(HalfActivations, OnlyLayersThatTakeThemGetHalfActivations) {
  auto in = fixture_input("llama");
  auto logits_dtype = [&](const nlohmann::json& cfg) {
    auto pm = fixture_peft_model("llama", torch::kBFloat16);
    pm->add_adapter("default", cfg);
    pm->eval();
    torch::NoGradGuard ng;
    return pm->forward(in).logits.scalar_type();
  };
  const nlohmann::json qv = {"q_proj", "v_proj"};
  EXPECT_EQ(logits_dtype({{"peft_type", "LORA"}, {"r", 4}, {"target_modules", qv}}), torch::kBFloat16);
  EXPECT_EQ(logits_dtype({{"peft_type", "LORA"}, {"r", 4}, {"use_rslora", true}, {"target_modules", qv}}), torch::kBFloat16);
  EXPECT_EQ(logits_dtype({{"peft_type", "LOHA"}, {"r", 4}, {"target_modules", qv}}), torch::kBFloat16);
  EXPECT_EQ(logits_dtype({{"peft_type", "VERA"}, {"r", 4}, {"target_modules", qv}}), torch::kBFloat16);
  EXPECT_EQ(logits_dtype({{"peft_type", "ADALORA"}, {"init_r", 4}, {"target_r", 2}, {"total_step", 10},
                          {"target_modules", qv}}),
            torch::kBFloat16);
  EXPECT_EQ(logits_dtype({{"peft_type", "LORA"}, {"r", 4}, {"use_dora", true}, {"target_modules", qv}}), torch::kFloat32);
  EXPECT_EQ(logits_dtype({{"peft_type", "PROMPT_TUNING"}, {"num_virtual_tokens", 3}, {"task_type", "CAUSAL_LM"}}),
            torch::kFloat32);
  EXPECT_EQ(logits_dtype({{"peft_type", "IA3"}, {"target_modules", {"k_proj", "v_proj", "down_proj"}},
                          {"feedforward_modules", {"down_proj"}}}),
            torch::kFloat32);
  EXPECT_EQ(logits_dtype({{"peft_type", "BOTTLENECK"}}), torch::kFloat32);
  auto pm = fixture_peft_model("llama", torch::kBFloat16);
  pm->add_adapter("default", {{"peft_type", "LORA"}, {"r", 4}, {"target_modules", qv}});
  pm->disable_adapters(true);
  torch::NoGradGuard ng;
  EXPECT_EQ(pm->forward(in).logits.scalar_type(), torch::kFloat32);  // the plain base, as before
}

// A mixed batch of two LoRA adapters and a base row on the bfloat16 base: each row equals the
// row run with its adapter alone, both in half activations. Not bit for bit: a batch of 3 rows
// and one of 1 block the bfloat16 products differently, and a one-ulp difference in a bfloat16
// activation carries through the layers, so the bound is the depth bound of
// PrecisionBf16.LlamaLogitsCloseToFloat32Fixture, 4 * 2^-8 * (2L + 1) * rms(logits).
TEST(HalfActivations, MixedLoraBatchRowsMatchEachAdapterAlone) {
  auto pm = fixture_peft_model("llama", torch::kBFloat16);
  const nlohmann::json qv = {"q_proj", "v_proj"};
  pm->add_adapter("a", {{"peft_type", "LORA"}, {"r", 4}, {"target_modules", qv}});
  pm->add_adapter("b", {{"peft_type", "LORA"}, {"r", 4}, {"target_modules", qv}});
  torch::manual_seed(3);
  for (auto& a : {"a", "b"}) {
    pm->set_adapter(a);
    randomize(*pm, 0.2);
  }
  pm->eval();
  ModelInput in = fixture_input("llama");
  in.labels = torch::Tensor();
  in.input_ids = torch::cat({in.input_ids, in.input_ids.slice(0, 0, 1)}, 0);
  in.attention_mask = torch::cat({in.attention_mask, in.attention_mask.slice(0, 0, 1)}, 0);
  const std::vector<std::string> rows = {"a", "b", PeftModel::kBaseRow};
  torch::NoGradGuard ng;
  auto mixed = pm->forward(in, rows).logits;
  ASSERT_EQ(mixed.scalar_type(), torch::kBFloat16);
  for (size_t i = 0; i < rows.size(); ++i) {
    ModelInput one = in;
    one.input_ids = in.input_ids.slice(0, i, i + 1);
    one.attention_mask = in.attention_mask.slice(0, i, i + 1);
    torch::Tensor alone;
    if (rows[i] == PeftModel::kBaseRow) {
      const HalfActivations on(true);
      pm->disable_adapters(true);
      alone = pm->model->forward(one).logits;
      pm->disable_adapters(false);
    } else {
      pm->set_adapter(rows[i]);
      alone = pm->forward(one).logits;
    }
    ASSERT_EQ(alone.scalar_type(), torch::kBFloat16) << rows[i];
    auto row = mixed.slice(0, i, i + 1).to(torch::kFloat32);
    const double rms = alone.to(torch::kFloat32).pow(2).mean().sqrt().item<double>();
    const int64_t L = pm->model->dims().num_layers;
    EXPECT_LE(max_diff(row, alone.to(torch::kFloat32)), 4 * std::ldexp(1.0, -8) * (2 * L + 1) * rms) << rows[i];
  }
}

// The fused chunked loss (loss_chunk_tokens, models/chunked_loss.h) on the bfloat16 stream:
// the same loss and LoRA gradients as the unchunked loss on the whole logits. The chunks'
// gradients come from the same kernels on the same bfloat16 logits, so they agree to float32
// rounding (the loss sums in float64 here, in float32 there).
TEST(HalfActivations, FusedChunkedLossEqualsUnchunked) {
  auto run = [&](int64_t chunk) {
    auto pm = bf16_llama_with_peft_lora();
    pm->train();
    set_memory_options(*pm->model, MemoryOptions{false, chunk});
    auto out = pm->forward(fixture_input("llama"));
    EXPECT_EQ(out.logits.defined(), chunk == 0);
    out.loss.backward();
    std::vector<torch::Tensor> g;
    for (auto& [n, p] : pm->named_trainable_parameters()) g.push_back(p.grad().clone());
    return std::make_pair(out.loss.item<double>(), g);
  };
  auto [l0, g0] = run(0);
  for (int64_t chunk : {3, 5, 1000}) {
    auto [l, g] = run(chunk);
    EXPECT_NEAR(l, l0, 1e-6 * l0) << chunk;
    ASSERT_EQ(g.size(), g0.size());
    for (size_t i = 0; i < g.size(); ++i)
      EXPECT_LE(max_diff(g[i], g0[i]), 1e-5 * std::max(1.0, g0[i].abs().max().item<double>())) << chunk << " " << i;
  }
}

}  // namespace peft::test
