// Half-precision frozen bases (docs/PRECISION.md): a bfloat16 Llama against the float32
// transformers fixture, the tensor bytes a bfloat16 load allocates, float32 trainable state,
// the frozen Linear's product dtype, and the float16-on-CPU refusal.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/module.h"
#include "peft/precision.h"
#include "peft/tuner.h"
#include "test_util.h"

using namespace peft;

namespace {

const std::string kLlama = "tests/fixtures/hf/models/llama";

ModelInput fixture_input(const std::string& dir) {
  auto in = load_safetensors(dir + "/inputs.safetensors");
  ModelInput mi;
  mi.input_ids = in["input_ids"];
  mi.attention_mask = in["attention_mask"];
  mi.labels = in["labels"];
  return mi;
}

int64_t param_bytes(const torch::nn::Module& m) {
  int64_t n = 0;
  for (auto& p : m.parameters()) n += p.numel() * p.element_size();
  return n;
}

}  // namespace

// A bfloat16 base against transformers' float32 logits. Each bfloat16 rounding (weights, and the
// input of every Linear product) has relative error <= u = 2^-9 (8 significand bits, round to
// nearest); through L blocks of two sublayers, each a few products deep, the logit error grows
// about linearly in depth: |err| <= c * 2^-8 * (2L + 1) * rms(logits), c = 4 covering the
// rounding of both operands (the measured worst case is printed).
TEST(PrecisionBf16, LlamaLogitsCloseToFloat32Fixture) {
  const std::string dir = test::source_path(kLlama);
  LoadOptions lo;
  lo.dtype = torch::kBFloat16;
  auto model = load_model(dir, lo);
  model->eval();
  for (auto& p : model->parameters()) ASSERT_EQ(p.scalar_type(), torch::kBFloat16);
  auto ref = load_safetensors(dir + "/reference.safetensors");
  torch::NoGradGuard ng;
  auto out = model->forward(fixture_input(dir));
  ASSERT_EQ(out.logits.scalar_type(), torch::kFloat32);  // activations and logits in float32
  const auto& r = ref["logits"];
  const int64_t L = model->dims().num_layers;
  const double rms = r.pow(2).mean().sqrt().item<double>();
  const double bound = 4 * std::ldexp(1.0, -8) * (2 * L + 1) * rms;
  const double err = (out.logits - r).abs().max().item<double>();
  std::cerr << "bf16 logits: max |err| " << err << ", bound " << bound << " (rms " << rms << ", " << L << " layers)\n";
  EXPECT_LT(err, bound);
  EXPECT_GT(err, 0.0);  // it did compute in bfloat16
  // The loss (float32 cross-entropy of bfloat16-product logits) is close too.
  EXPECT_NEAR(out.loss.item<double>(), ref["loss"].item<double>(), 4 * std::ldexp(1.0, -8) * ref["loss"].item<double>());
  // Greedy choices agree wherever the float32 margin exceeds the bound.
  auto top2 = std::get<0>(r.topk(2, -1));
  auto margin = top2.select(-1, 0) - top2.select(-1, 1);
  auto same = out.logits.argmax(-1) == r.argmax(-1);
  EXPECT_TRUE((same | (margin < 2 * bound)).all().item<bool>());
}

// Loading into bfloat16 allocates half the tensor bytes of float32, and never a float32 copy:
// the model is built in bfloat16 and each checkpoint tensor converted on its own.
TEST(PrecisionBf16, LoadAllocatesHalfTheTensorBytes) {
  const std::string dir = test::source_path(kLlama);
  int64_t peak32 = 0, peak16 = 0, bytes32 = 0, bytes16 = 0;
  {
    TensorBytesMeter meter;
    auto m = load_model(dir);
    peak32 = meter.peak();
    bytes32 = param_bytes(*m);
  }
  {
    TensorBytesMeter meter;
    LoadOptions lo;
    lo.dtype = torch::kBFloat16;
    auto m = load_model(dir, lo);
    peak16 = meter.peak();
    bytes16 = param_bytes(*m);
  }
  std::cerr << "tensor bytes: parameters " << bytes32 << " -> " << bytes16 << "; load peak " << peak32 << " -> "
            << peak16 << "\n";
  EXPECT_EQ(bytes16 * 2, bytes32);
  ASSERT_GT(peak32, 0);
  EXPECT_GE(peak32, bytes32);  // float32: the freshly built model (the checkpoint is memory-mapped)
  // bfloat16: the model in bfloat16 plus converted tensors in flight, well under a float32 copy.
  EXPECT_LT(peak16, 0.6 * peak32);
  EXPECT_LT(peak16, bytes32);
}

// A bfloat16 checkpoint loads into a bfloat16 model with the same weights as converting the
// float32 one, and into float32 exactly widened.
TEST(PrecisionBf16, Bf16CheckpointLoadsAsConverted) {
  const std::string src = test::source_path(kLlama);
  const std::string dir = test::temp_dir("bf16_ckpt");
  TensorMap w;
  for (auto& [k, t] : load_safetensors(src + "/model.safetensors")) w[k] = t.to(torch::kBFloat16);
  save_safetensors(dir + "/model.safetensors", w, {{"format", "pt"}});
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json");
  LoadOptions lo;
  lo.dtype = torch::kBFloat16;
  auto a = load_model(src, lo), b = load_model(dir, lo), c = load_model(dir);
  auto sa = a->state_dict(), sb = b->state_dict(), sc = c->state_dict();
  for (auto& [k, t] : sa) {
    ASSERT_TRUE(sb.count(k)) << k;
    EXPECT_EQ(sb[k].scalar_type(), torch::kBFloat16) << k;
    EXPECT_TRUE(torch::equal(t, sb[k])) << k;
    EXPECT_EQ(sc[k].scalar_type(), torch::kFloat32) << k;
    EXPECT_TRUE(torch::equal(t.to(torch::kFloat32), sc[k])) << k;
  }
}

// The frozen Linear on a bfloat16 weight: exactly the bfloat16 product of the rounded input,
// returned in float32; input gradients flow, the frozen weight gets none.
TEST(PrecisionBf16, FrozenLinearComputesInWeightDtype) {
  torch::manual_seed(1);
  Linear lin(16, 8, /*bias=*/true);
  {
    torch::NoGradGuard ng;
    lin.bias.uniform_(-1, 1);
  }
  lin.weight.set_data(lin.weight.to(torch::kBFloat16));
  lin.bias.set_data(lin.bias.to(torch::kBFloat16));
  lin.weight.set_requires_grad(false);
  lin.bias.set_requires_grad(false);
  auto x = torch::randn({3, 16}, torch::requires_grad());
  auto y = lin.forward(x);
  ASSERT_EQ(y.scalar_type(), torch::kFloat32);
  auto want = torch::nn::functional::linear(x.detach().to(torch::kBFloat16), lin.weight).to(torch::kFloat32) +
              lin.bias.to(torch::kFloat32);
  EXPECT_TRUE(torch::equal(y.detach(), want));
  y.sum().backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_EQ(x.grad().scalar_type(), torch::kFloat32);
  // d/dx sum(x W^T) = column sums of W (each a bfloat16 product, so compare loosely).
  auto g = lin.weight.to(torch::kFloat32).sum(0).expand({3, 16});
  EXPECT_TRUE(torch::allclose(x.grad(), g, 1e-2, 1e-2));
  EXPECT_FALSE(lin.weight.grad().defined());
}

// Under MatmulDtypeGuard a float32 (trainable) weight computes in bfloat16 and its gradient is
// float32 (mixed-precision full fine-tuning); without a guard nothing changes.
TEST(PrecisionBf16, MatmulDtypeGuardCastsFloat32Weights) {
  torch::manual_seed(2);
  Linear lin(16, 8, false);
  auto x = torch::randn({4, 16});
  auto plain = lin.forward(x);
  EXPECT_TRUE(torch::equal(plain, torch::nn::functional::linear(x, lin.weight)));
  torch::Tensor y;
  {
    MatmulDtypeGuard g(torch::kBFloat16);
    y = lin.forward(x);
  }
  auto want = torch::nn::functional::linear(x.to(torch::kBFloat16), lin.weight.to(torch::kBFloat16)).to(torch::kFloat32);
  EXPECT_TRUE(torch::equal(y.detach(), want));
  y.sum().backward();
  ASSERT_TRUE(lin.weight.grad().defined());
  EXPECT_EQ(lin.weight.grad().scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(lin.forward(x), plain));  // the guard is gone
}

TEST(PrecisionBf16, Float16MatmulOnCpuIsRefused) {
  Linear lin(8, 4, false);
  lin.weight.set_data(lin.weight.to(torch::kFloat16));
  try {
    lin.forward(torch::randn({2, 8}));
    FAIL() << "float16 on CPU should be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("float16 matrix products are not implemented on CPU"), std::string::npos)
        << e.what();
  }
}

// LoRA on a bfloat16 base: adapter weights, their gradients and AdamW's moments are float32,
// the frozen base stays bfloat16, and the loss matches the same adapter on the float32 base
// (same seed: the adapter init is drawn in float32 either way).
TEST(PrecisionBf16, LoraTrainableStateIsFloat32) {
  const std::string dir = test::source_path(kLlama);
  auto run = [&](torch::Dtype dt, std::vector<torch::Tensor>* exp_avg) {
    LoadOptions lo;
    lo.dtype = dt;
    auto model = load_model(dir, lo);
    auto pm = std::make_shared<PeftModel>(model);
    torch::manual_seed(7);
    pm->add_adapter("default", {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj", "v_proj"}},
                                {"init_lora_weights", false}});
    auto named = pm->named_trainable_parameters();
    std::vector<torch::Tensor> ps;
    for (auto& [n, p] : named) {
      EXPECT_EQ(p.scalar_type(), torch::kFloat32) << n;
      ps.push_back(p);
    }
    for (auto& p : model->named_parameters())
      if (!p.value().requires_grad()) EXPECT_EQ(p.value().scalar_type(), dt) << p.key();
    torch::optim::AdamW opt(ps, torch::optim::AdamWOptions(1e-3));
    auto loss = pm->forward(fixture_input(dir)).loss;
    loss.backward();
    for (auto& p : ps) EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32);
    opt.step();
    if (exp_avg)
      for (auto& p : ps) {
        auto& st = static_cast<torch::optim::AdamWParamState&>(*opt.state().at(c10::guts::to_string(p.unsafeGetTensorImpl())));
        exp_avg->push_back(st.exp_avg());
      }
    return loss.item<double>();
  };
  std::vector<torch::Tensor> m;
  const double l16 = run(torch::kBFloat16, &m), l32 = run(torch::kFloat32, nullptr);
  ASSERT_FALSE(m.empty());
  for (auto& t : m) EXPECT_EQ(t.scalar_type(), torch::kFloat32);
  EXPECT_NEAR(l16, l32, 4 * std::ldexp(1.0, -8) * l32);
}

// BitFit on a bfloat16 GPT-2: the trainable biases become float32 (their Linear adds them in
// float32), the weights stay bfloat16.
TEST(PrecisionBf16, BitFitBiasesTrainInFloat32) {
  const std::string dir = test::source_path("tests/fixtures/hf/models/gpt2");
  LoadOptions lo;
  lo.dtype = torch::kBFloat16;
  auto model = load_model(dir, lo);
  auto pm = std::make_shared<PeftModel>(model);
  pm->add_adapter("default", method_config("bitfit"));
  auto named = pm->named_trainable_parameters();
  ASSERT_FALSE(named.empty());
  for (auto& [n, p] : named) EXPECT_EQ(p.scalar_type(), torch::kFloat32) << n;
  int64_t frozen16 = 0;
  for (auto& p : model->named_parameters())
    if (!p.value().requires_grad()) {
      EXPECT_EQ(p.value().scalar_type(), torch::kBFloat16) << p.key();
      ++frozen16;
    }
  EXPECT_GT(frozen16, 0);
  auto loss = pm->forward(fixture_input(dir)).loss;
  loss.backward();
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  for (auto& [n, p] : named) {
    ASSERT_TRUE(p.grad().defined()) << n;
    EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32) << n;
  }
}
