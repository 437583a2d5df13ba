// QuantLinear and quantized models: forward / backward against the dequantized float layer,
// LoRA on a quantized base, bitsandbytes checkpoints written, read, built by hand and corrupted.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <filesystem>

#include "models/quant_linear.h"
#include "peft/error.h"
#include "peft/io.h"
#include "peft/tuner.h"
#include "test_util.h"

using namespace peft;
using namespace peft::quant;
namespace fs = std::filesystem;

namespace {

QuantConfig cfg(QuantType t, bool dq = false, torch::ScalarType cd = torch::kFloat32) {
  QuantConfig c;
  c.type = t;
  c.double_quant = dq;
  c.compute_dtype = cd;
  return c;
}

std::string llama_fixture() { return test::source_path("tests/fixtures/hf/models/llama"); }

ModelInput ids_input() {
  ModelInput in;
  in.input_ids = torch::tensor({{1, 5, 9, 33, 70, 2}}, torch::kLong);
  return in;
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    FAIL() << "no error";
  } catch (const Error& e) {
    for (auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\n  missing: " << p;
  }
}

// The JSON bitsandbytes packs into quant_state (json.dumps of QuantState.as_dict's non-tensors).
torch::Tensor json_bytes(const std::string& s) {
  auto t = torch::empty({static_cast<int64_t>(s.size())}, torch::kUInt8);
  std::memcpy(t.data_ptr<uint8_t>(), s.data(), s.size());
  return t;
}

}  // namespace

TEST(QuantLinear, ForwardAndInputGradientMatchTheDequantizedFloatLayer) {
  torch::manual_seed(0);
  auto W = torch::randn({24, 40}) * 0.1, b = torch::randn({24});
  for (auto t : {QuantType::NF4, QuantType::FP4, QuantType::Int8}) {
    QuantLinear q(40, 24, W, false, b, cfg(t, t != QuantType::Int8));
    auto Wd = q.dequantized_weight(torch::kFloat32).to(torch::kFloat64);
    auto x = torch::randn({3, 5, 40}, torch::dtype(torch::kFloat64)).set_requires_grad(true);
    auto xf = x.detach().to(torch::kFloat32).set_requires_grad(true);
    auto y = q.forward(xf);
    EXPECT_EQ(y.scalar_type(), torch::kFloat32);
    auto ref = torch::nn::functional::linear(x, Wd, b.to(torch::kFloat64));
    EXPECT_TRUE(torch::allclose(y.to(torch::kFloat64), ref, 1e-5, 1e-5)) << quant_type_name(t);
    auto g = torch::randn_like(ref);
    y.backward(g.to(torch::kFloat32));
    ref.backward(g);
    EXPECT_TRUE(torch::allclose(xf.grad().to(torch::kFloat64), x.grad(), 1e-5, 1e-5)) << quant_type_name(t);
    // The stored weight takes no gradient; the placeholder is empty and frozen.
    EXPECT_EQ(q.weight.numel(), 0);
    EXPECT_FALSE(q.weight.requires_grad());
    EXPECT_FALSE(q.weight.grad().defined());
  }
}

TEST(QuantLinear, Bfloat16ComputeDtypeStaysCloseAndKeepsTheInputDtype) {
  torch::manual_seed(1);
  auto W = torch::randn({32, 64}) * 0.1;
  QuantLinear f32(64, 32, W, false, torch::Tensor(), cfg(QuantType::NF4, true));
  QuantLinear b16(64, 32, W, false, torch::Tensor(), cfg(QuantType::NF4, true, torch::kBFloat16));
  auto x = torch::randn({4, 64});
  auto y = b16.forward(x);
  EXPECT_EQ(y.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(y, f32.forward(x), 0.05, 0.05));
  // bfloat16 dequantization rounds the float32 one.
  EXPECT_TRUE(torch::equal(b16.dequantized_weight(torch::kBFloat16), f32.dequantized_weight(torch::kFloat32).to(torch::kBFloat16)));
}

TEST(QuantLinear, CloneIsADeepCopyAndDtypeChangesLeaveTheStoredWeight) {
  torch::manual_seed(2);
  auto W = torch::randn({16, 32}) * 0.1;
  for (auto t : {QuantType::FP4, QuantType::Int8}) {
    QuantLinear q(32, 16, W, false, torch::randn({16}), cfg(t, t == QuantType::FP4));
    auto c = std::dynamic_pointer_cast<QuantLinear>(q.clone_layer());
    ASSERT_TRUE(c);
    auto x = torch::randn({3, 32});
    EXPECT_TRUE(torch::equal(c->forward(x), q.forward(x)));
    if (t == QuantType::FP4) EXPECT_NE(c->q4.packed.data_ptr(), q.q4.packed.data_ptr());
    else EXPECT_NE(c->q8.CB.data_ptr(), q.q8.CB.data_ptr());
    auto before = q.dequantized_weight(torch::kFloat32);
    q.to(torch::kFloat64);  // a model-wide dtype change converts the bias, not the stored weight
    EXPECT_EQ(q.bias.scalar_type(), torch::kFloat64);
    EXPECT_TRUE(torch::equal(q.dequantized_weight(torch::kFloat32), before));
  }
}

TEST(QuantModel, QuantizesEveryLinearButTheHeadAndLoraWrapsIt) {
  auto m = load_model(llama_fixture());
  auto ref = m->forward(ids_input()).logits;
  auto rep = quantize_model(*m, cfg(QuantType::NF4, true));
  EXPECT_EQ(rep.layers, 2 * 7);  // q, k, v, o, gate, up, down per layer
  ASSERT_EQ(rep.skipped.size(), 1u);
  EXPECT_EQ(rep.skipped[0], "lm_head");
  EXPECT_TRUE(m->config.contains("quantization_config"));
  for (auto& s : find_slots(*m)) {
    auto l = s.get();
    if (dynamic_cast<Linear*>(l.get())) EXPECT_EQ(as_quantized(l.get()) != nullptr, s.path != "lm_head") << s.path;
  }
  auto y = m->forward(ids_input()).logits;
  // Reference: the float model with each quantized Linear's weight replaced by its dequantization.
  auto f = load_model(llama_fixture());
  {
    torch::NoGradGuard ng;
    auto mods = m->named_modules();
    for (auto& item : f->named_modules()) {
      auto* lin = dynamic_cast<Linear*>(item.value().get());
      if (!lin || !mods.contains(item.key())) continue;
      if (auto* q = as_quantized(dynamic_cast<Layer*>(mods[item.key()].get())))
        lin->weight.set_data(q->dequantized_weight(torch::kFloat32));
    }
  }
  EXPECT_TRUE(torch::allclose(y, f->forward(ids_input()).logits, 1e-5, 1e-5));
  EXPECT_FALSE(torch::allclose(y, ref, 1e-3, 1e-3));  // and it is not the float model
  auto pm = std::make_shared<PeftModel>(m);
  pm->add_adapter("default", method_config("lora", {{"r", 4}, {"target_modules", {"q_proj", "v_proj"}}}));
  // B = 0: the adapter starts as the quantized base; training reaches only the adapter.
  EXPECT_TRUE(torch::allclose(pm->forward(ids_input()).logits, y));
  auto in = ids_input();
  in.labels = in.input_ids;
  pm->forward(in).loss.backward();
  int64_t with_grad = 0;
  for (auto& kv : pm->named_trainable_parameters()) with_grad += kv.second.grad().defined();
  EXPECT_EQ(with_grad, 2 * 2 * 2);  // lora_A and lora_B of q and v in 2 layers
  auto r = pm->trainable_report();
  EXPECT_GT(r.total, 2 * 7 * 64 * 64);  // the quantized weights count with their logical size
  // Merging into the quantized base: QuantMerge.* below.
  auto pm2 = std::make_shared<PeftModel>(load_model(llama_fixture()));
  quantize_model(*pm2->model, cfg(QuantType::NF4));
  expect_error([&] { pm2->add_adapter("d", method_config("dora", {{"r", 4}})); }, {"DoRA", "quantized"});
  // Each LoRA variant or init that needs the float weight names itself (tuners/lora_variants.h);
  // the others train on the quantized base.
  expect_error([&] { pm2->add_adapter("d", method_config("delta-lora", {{"r", 4}})); }, {"Delta-LoRA", "quantized"});
  expect_error([&] { pm2->add_adapter("d", method_config("pissa", {{"r", 4}})); }, {"PiSSA", "quantized"});
  expect_error([&] { pm2->add_adapter("d", method_config("olora", {{"r", 4}})); }, {"OLoRA", "quantized"});
  expect_error([&] { pm2->add_adapter("d", method_config("loftq", {{"r", 4}})); }, {"LoftQ", "quantized"});
  EXPECT_TRUE(pm2->adapters().empty());
  for (const char* m : {"rslora", "lora-fa", "dylora"}) {
    EXPECT_NO_THROW(pm2->add_adapter(m == std::string("lora-fa") ? "fa" : m, method_config(m, {{"r", 4}}))) << m;
  }
}

TEST(QuantModel, QuantizeOnLoadEqualsQuantizingTheLoadedModel) {
  for (auto t : {QuantType::NF4, QuantType::Int8}) {
    auto a = load_model(llama_fixture());
    quantize_model(*a, cfg(t, true && t != QuantType::Int8));
    QuantizeReport rep;
    auto b = load_model_quantized(llama_fixture(), cfg(t, t != QuantType::Int8), {}, &rep);
    EXPECT_EQ(rep.layers, 14);
    auto sa = a->state_dict(), sb = b->state_dict();
    ASSERT_EQ(sa.size(), sb.size());
    for (auto& [k, v] : sa) EXPECT_TRUE(torch::equal(v, sb.at(k))) << k;
    EXPECT_TRUE(torch::equal(a->forward(ids_input()).logits, b->forward(ids_input()).logits));
  }
}

TEST(QuantCheckpoint, SavePretrainedReloadsBitExact) {
  for (auto t : {QuantType::NF4, QuantType::FP4, QuantType::Int8}) {
    auto dir = test::temp_dir("quant_save");
    auto m = load_model_quantized(llama_fixture(), cfg(t, t != QuantType::Int8));
    m->save_pretrained(dir);
    auto cfgj = read_json(dir + "/config.json");
    ASSERT_TRUE(cfgj.contains("quantization_config"));
    EXPECT_EQ(cfgj["quantization_config"]["load_in_8bit"], t == QuantType::Int8);
    auto file = load_safetensors(dir + "/model.safetensors");
    if (t == QuantType::Int8) {
      EXPECT_EQ(file.at("model.layers.0.mlp.down_proj.weight").scalar_type(), torch::kInt8);
      EXPECT_TRUE(file.count("model.layers.0.mlp.down_proj.SCB"));
    } else {
      EXPECT_EQ(file.at("model.layers.0.mlp.down_proj.weight").sizes(), torch::IntArrayRef({64 * 128 / 2, 1}));
      EXPECT_TRUE(file.count("model.layers.0.mlp.down_proj.weight.quant_state.bitsandbytes__" + quant_type_name(t)));
    }
    EXPECT_EQ(file.at("lm_head.weight").scalar_type(), torch::kFloat32);
    auto back = load_model(dir);
    auto s1 = m->state_dict(), s2 = back->state_dict();
    ASSERT_EQ(s1.size(), s2.size());
    for (auto& [k, v] : s1) EXPECT_TRUE(torch::equal(v, s2.at(k))) << k;
    EXPECT_TRUE(torch::equal(m->forward(ids_input()).logits, back->forward(ids_input()).logits));
  }
}

// A checkpoint written from bitsandbytes' format description alone (no peft::quant writer): the
// float fixture with q_proj of layer 0 in 4-bit NF4 with double quantization and k_proj in int8.
TEST(QuantCheckpoint, HandBuiltBitsandbytesCheckpointLoadsWithTheSameWeights) {
  auto dir = test::temp_dir("quant_hand");
  auto w = load_safetensors(llama_fixture() + "/model.safetensors");
  TensorMap out;
  for (auto& [k, v] : w) out[k] = v.clone();
  const std::string q = "model.layers.0.self_attn.q_proj", k = "model.layers.0.self_attn.k_proj";
  const int64_t rows = 64, cols = 64, n = rows * cols, blocks = n / 64, nblocks = (blocks + 255) / 256;
  const int64_t krows = w.at(k + ".weight").size(0);  // 2 KV heads x 16
  torch::manual_seed(5);
  auto codes = torch::randint(0, 16, {n}, torch::kLong);
  auto qabs = torch::randint(0, 256, {blocks}, torch::kLong);
  auto nabs = torch::rand({nblocks}) * 0.01 + 0.005;
  auto nmap = torch::linspace(-1.0, 1.0, 256);  // any sorted map: the file carries it
  const double offset = 0.03125;
  // Packed: element 2i in the high nibble of byte i, 2i+1 in the low one; shape [n/2, 1].
  auto pairs = codes.view({n / 2, 2});
  auto packed = (pairs.select(1, 0) * 16 + pairs.select(1, 1)).to(torch::kUInt8).view({n / 2, 1});
  const double nf4[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                          -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                          0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                          0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
  auto table = torch::from_blob(const_cast<double*>(nf4), {16}, torch::kFloat64).to(torch::kFloat32);
  out[q + ".weight"] = packed;
  out[q + ".weight.absmax"] = qabs.to(torch::kUInt8);
  out[q + ".weight.quant_map"] = table;
  out[q + ".weight.nested_absmax"] = nabs;
  out[q + ".weight.nested_quant_map"] = nmap;
  out[q + ".weight.quant_state.bitsandbytes__nf4"] = json_bytes(
      "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", \"shape\": [64, 64], \"nested_blocksize\": 256, "
      "\"nested_dtype\": \"float32\", \"nested_offset\": 0.03125}");
  // Expected: table[code] * (nested_map[qabs] * nested_absmax[block / 256] + offset), in float64.
  auto blk = torch::arange(n).div(64, "floor");
  auto am = nmap.to(torch::kFloat64).index_select(0, qabs) * nabs.to(torch::kFloat64).index_select(0, torch::arange(blocks).div(256, "floor")) + offset;
  auto expect_q = (table.to(torch::kFloat64).index_select(0, codes) * am.index_select(0, blk)).view({rows, cols});
  // int8: CB [out, in], SCB [out], weight_format 0 ("row"); W = CB * SCB / 127.
  auto cb = torch::randint(-127, 128, {krows, cols}, torch::kLong).to(torch::kInt8);
  auto scb = torch::rand({krows}) + 0.5;
  out[k + ".weight"] = cb;
  out[k + ".SCB"] = scb;
  out[k + ".weight_format"] = torch::zeros({}, torch::kUInt8);
  auto expect_k = cb.to(torch::kFloat64) * scb.to(torch::kFloat64).unsqueeze(1) / 127.0;
  save_safetensors(dir + "/model.safetensors", out, {{"format", "pt"}});
  auto c = read_json(llama_fixture() + "/config.json");
  c["quantization_config"] = {{"quant_method", "bitsandbytes"}, {"load_in_4bit", true}, {"bnb_4bit_quant_type", "nf4"},
                              {"bnb_4bit_use_double_quant", true}, {"bnb_4bit_compute_dtype", "float32"}};
  write_json(dir + "/config.json", c);
  // One config cannot hold two types in transformers; the int8 layer is read under an 8-bit config below.
  fs::remove(dir + "/model.safetensors");
  TensorMap four = out;
  four.erase(k + ".SCB");
  four.erase(k + ".weight_format");
  four[k + ".weight"] = w.at(k + ".weight");
  save_safetensors(dir + "/model.safetensors", four, {{"format", "pt"}});
  auto m = load_model(dir);
  auto& lq = *as_quantized(dynamic_cast<Layer*>(m->named_modules()[q].get()));
  EXPECT_EQ(lq.q4.dtype, torch::kBFloat16);
  EXPECT_LT((lq.dequantized_weight(torch::kFloat32).to(torch::kFloat64) - expect_q).abs().max().item<double>(), 1e-7);
  EXPECT_EQ(as_quantized(dynamic_cast<Layer*>(m->named_modules()[k].get())), nullptr);  // float in this file
  EXPECT_TRUE(m->forward(ids_input()).logits.isfinite().all().item<bool>());

  auto dir8 = test::temp_dir("quant_hand8");
  TensorMap eight = out;
  for (auto& s : {".weight", ".weight.absmax", ".weight.quant_map", ".weight.nested_absmax", ".weight.nested_quant_map",
                  ".weight.quant_state.bitsandbytes__nf4"})
    eight.erase(q + s);
  eight[q + ".weight"] = w.at(q + ".weight");
  save_safetensors(dir8 + "/model.safetensors", eight, {{"format", "pt"}});
  c["quantization_config"] = {{"quant_method", "bitsandbytes"}, {"load_in_8bit", true}, {"llm_int8_threshold", 6.0}};
  write_json(dir8 + "/config.json", c);
  auto m8 = load_model(dir8);
  auto* lk = as_quantized(dynamic_cast<Layer*>(m8->named_modules()[k].get()));
  ASSERT_NE(lk, nullptr);
  EXPECT_LT((lk->dequantized_weight(torch::kFloat32).to(torch::kFloat64) - expect_k).abs().max().item<double>(), 1e-6);
}

TEST(QuantCheckpoint, CorruptFilesNameTheFileAndTensor) {
  auto good = test::temp_dir("quant_good");
  load_model_quantized(llama_fixture(), cfg(QuantType::NF4, true))->save_pretrained(good);
  const std::string key = "model.layers.1.mlp.up_proj.weight";
  auto corrupt = [&](const std::string& tag, const std::function<void(TensorMap&)>& edit) {
    auto dir = test::temp_dir(tag);
    auto w = load_safetensors(good + "/model.safetensors");
    TensorMap m;
    for (auto& [k, v] : w) m[k] = v.clone();
    edit(m);
    save_safetensors(dir + "/model.safetensors", m);
    fs::copy_file(good + "/config.json", dir + "/config.json");
    return dir;
  };
  auto d1 = corrupt("quant_absmax", [&](TensorMap& m) { m[key + ".absmax"] = m[key + ".absmax"].slice(0, 0, 10).clone(); });
  expect_error([&] { load_model(d1); }, {d1 + "/model.safetensors", key, "absmax has 10 values, expected"});
  auto d2 = corrupt("quant_noqs", [&](TensorMap& m) { m.erase(key + ".quant_state.bitsandbytes__nf4"); });
  expect_error([&] { load_model(d2); }, {d2 + "/model.safetensors", key, "quant_state"});
  auto d3 = corrupt("quant_type", [&](TensorMap& m) {
    auto t = m[key + ".quant_state.bitsandbytes__nf4"];
    m.erase(key + ".quant_state.bitsandbytes__nf4");
    m[key + ".quant_state.bitsandbytes__int4"] = t;
  });
  expect_error([&] { load_model(d3); }, {d3 + "/model.safetensors", key + ".quant_state.bitsandbytes__int4", "unknown quant type 'int4'"});
  auto d4 = corrupt("quant_json", [&](TensorMap& m) {
    m[key + ".quant_state.bitsandbytes__nf4"] = json_bytes("{\"quant_type\": \"af4\", \"blocksize\": 64}");
  });
  expect_error([&] { load_model(d4); }, {d4 + "/model.safetensors", key, "unknown quant type 'af4'"});
  auto d5 = corrupt("quant_data", [&](TensorMap& m) { m[key] = m[key].slice(0, 0, 100).clone(); });
  expect_error([&] { load_model(d5); }, {d5 + "/model.safetensors", key, "packed bytes"});
}

// Every family: the quantized model computes what the float model computes with each quantized
// Linear's weight replaced by its dequantization (GPT-2's Conv1D transposed back to [in, out]),
// and the task head stays in float.
class QuantFamilies : public ::testing::TestWithParam<std::string> {};

TEST_P(QuantFamilies, EqualsTheFloatModelWithDequantizedWeights) {
  const std::string dir = test::source_path("tests/fixtures/hf/models/" + GetParam());
  ModelInput in;
  in.input_ids = torch::tensor({{1, 2, 3, 4, 5}}, torch::kLong);
  for (auto t : {QuantType::NF4, QuantType::Int8}) {
    auto m = load_model_quantized(dir, cfg(t, t == QuantType::NF4));
    if (m->is_encoder_decoder()) in.decoder_input_ids = torch::tensor({{0, 1, 2}}, torch::kLong);
    auto f = load_model(dir);
    auto roles = f->roles();
    int64_t quantized = 0;
    {
      torch::NoGradGuard ng;
      auto mods = m->named_modules();
      for (auto& item : f->named_modules()) {
        auto* lin = dynamic_cast<Linear*>(item.value().get());
        if (!lin || !mods.contains(item.key())) continue;
        auto* q = as_quantized(dynamic_cast<Layer*>(mods[item.key()].get()));
        if (roles.count("head") && item.key().find(roles["head"]) != std::string::npos)
          EXPECT_EQ(q, nullptr) << "head " << item.key() << " was quantized";
        if (!q) continue;
        ++quantized;
        auto W = q->dequantized_weight(torch::kFloat32);
        lin->weight.set_data(lin->conv1d ? W.t().contiguous() : W);
      }
    }
    EXPECT_GT(quantized, 0);
    auto a = m->forward(in).logits, b = f->forward(in).logits;
    auto saved = test::temp_dir("quant_fam");
    m->save_pretrained(saved);  // the bitsandbytes layout reloads to the same model
    EXPECT_TRUE(torch::equal(load_model(saved)->forward(in).logits, a)) << GetParam();
    EXPECT_TRUE(torch::allclose(a, b, 1e-4, 1e-5)) << GetParam() << " " << quant_type_name(t) << " max diff "
                                                   << (a - b).abs().max().item<double>();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, QuantFamilies,
                         ::testing::Values("llama", "gpt2", "bert_cls", "roberta_cls", "t5", "t5_v1_1"));

namespace {
// The tuner layers of `pm` with the quantized layer each wraps.
std::vector<std::pair<TunerLayer*, QuantLinear*>> quantized_targets(PeftModel& pm) {
  std::vector<std::pair<TunerLayer*, QuantLinear*>> out;
  for (auto& kv : pm.tuner_layers())
    if (auto* q = dynamic_cast<QuantLinear*>(&kv.second->base_linear())) out.emplace_back(kv.second, q);
  return out;
}
torch::Tensor requantized(const QuantLinear& q, const torch::Tensor& w) {
  if (q.type == QuantType::Int8) return dequantize_int8(quantize_int8_rowwise(w));
  return dequantize_4bit(quantize_4bit(w, q.type, q.q4.blocksize, q.q4.nested));
}
}  // namespace

// peft's Linear4bit / Linear8bitLt.merge: W' = quantize(dequant(W) + delta), unmerge:
// quantize(dequant(W') - delta), in the layer's own format.
TEST(QuantMerge, MergeStoresTheRequantizedSumAndUnmergeTheRequantizedDifference) {
  for (auto [t, dq] : {std::pair{QuantType::NF4, true}, std::pair{QuantType::FP4, false}, std::pair{QuantType::Int8, false}}) {
    auto m = load_model(llama_fixture());
    quantize_model(*m, cfg(t, dq));
    auto pm = std::make_shared<PeftModel>(m);
    torch::manual_seed(4);
    pm->add_adapter("default", method_config("lora", {{"r", 4}, {"target_modules", {"q_proj", "v_proj", "down_proj"}},
                                                      {"init_lora_weights", false}}));
    auto targets = quantized_targets(*pm);
    ASSERT_EQ(targets.size(), 6u);
    std::vector<torch::Tensor> before, delta;
    for (auto& [tl, q] : targets) {
      before.push_back(q->dequantized_weight(torch::kFloat32));
      delta.push_back(tl->delta_weight("default").detach());
    }
    auto y0 = pm->forward(ids_input()).logits;
    pm->merge();
    std::vector<torch::Tensor> merged;
    for (size_t i = 0; i < targets.size(); ++i) {
      auto* q = targets[i].second;
      merged.push_back(q->dequantized_weight(torch::kFloat32));
      EXPECT_TRUE(torch::equal(merged.back(), requantized(*q, before[i] + delta[i]))) << quant_type_name(t) << " " << i;
      EXPECT_EQ(q->weight.numel(), 0) << "the float copy is released";
      EXPECT_EQ(q->q4.nested, dq && t != QuantType::Int8);
    }
    // The merged model runs the base only; it is the adapter's forward up to the rounding.
    auto y1 = pm->forward(ids_input()).logits;
    EXPECT_FALSE(torch::equal(y1, y0));
    EXPECT_LT((y1 - y0).abs().max().item<double>(), 0.5 * (y0.abs().max().item<double>() + 1));
    pm->unmerge();
    for (size_t i = 0; i < targets.size(); ++i) {
      auto* q = targets[i].second;
      EXPECT_TRUE(torch::equal(q->dequantized_weight(torch::kFloat32), requantized(*q, merged[i] - delta[i])))
          << quant_type_name(t) << " " << i;
    }
  }
}

// merge_and_unload into a float model: dequantize_model first, then the merge is exact.
TEST(QuantMerge, DequantizedModelMergesExactly) {
  auto m = load_model(llama_fixture());
  quantize_model(*m, cfg(QuantType::NF4, true));
  auto pm = std::make_shared<PeftModel>(m);
  torch::manual_seed(6);
  pm->add_adapter("default", method_config("lora", {{"r", 4}, {"target_modules", {"q_proj", "v_proj"}},
                                                    {"init_lora_weights", false}}));
  auto y0 = pm->forward(ids_input()).logits;
  EXPECT_EQ(dequantize_model(*m, torch::kFloat32), 14);
  EXPECT_FALSE(m->config.contains("quantization_config"));
  for (auto& s : find_slots(*m)) EXPECT_EQ(as_quantized(s.get().get()), nullptr) << s.path;
  EXPECT_TRUE(torch::allclose(pm->forward(ids_input()).logits, y0, 1e-5, 1e-5));
  auto merged = pm->merge_and_unload();
  EXPECT_TRUE(torch::allclose(merged->forward(ids_input()).logits, y0, 1e-5, 1e-5));
  EXPECT_EQ(dequantize_model(*merged, torch::kFloat32), 0);
}
