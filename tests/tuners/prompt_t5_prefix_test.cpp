// Prefix tuning / P-tuning v2 on T5 in Python peft 0.13.2's layout (the default) against the
// wave-2 fixture tests/fixtures/wave2/adapters/t5/prefix_tuning (README "T5 prefix tuning"): the
// P rows are the decoder's past_key_values (duplicated for the two submodules), the encoder gets
// no prefix, the cross rows replace the encoder's keys/values only when the encoder length is P.
// Checked: the fixture's logits and loss (also with encoder length == P), the saved folder equal
// to peft's in keys, shapes and config, round trips, cached decoding, gradients, refusals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <set>

#include "peft/generate.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/tuner_test_util.h"

using namespace peft;
using peft::test::error_of;
using peft::test::max_diff;

namespace {
std::string wave2(const std::string& rel) { return test::source_path("tests/fixtures/wave2/" + rel); }
const std::string kAdapter = "adapters/t5/prefix_tuning";

::testing::AssertionResult close(const torch::Tensor& a, const torch::Tensor& b, double atol = 1e-5, double rtol = 1e-4) {
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  auto diff = (a - b).abs();
  if ((diff <= atol + rtol * b.abs()).all().item<bool>()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs diff " << diff.max().item<double>();
}

PeftModelPtr t5(torch::Dtype dt = torch::kFloat32) {
  auto m = load_model(wave2("models/t5"), LoadOptions{std::nullopt, 0, dt});
  m->eval();
  return std::make_shared<PeftModel>(m);
}

ModelInput input_file(const std::string& path) {
  auto in = load_safetensors(path);
  ModelInput mi;
  mi.input_ids = in.at("input_ids");
  mi.attention_mask = in.at("attention_mask");
  mi.decoder_input_ids = in.at("decoder_input_ids");
  mi.labels = in.at("labels");
  return mi;
}
ModelInput inputs(const std::string& suffix) { return input_file(wave2("models/t5/inputs" + suffix + ".safetensors")); }
ModelInput inputs_enc_len_eq_nv() { return input_file(wave2(kAdapter + "/inputs_enc_len_eq_nv.safetensors")); }

ModelOutput run(PeftModel& pm, const ModelInput& in) {
  torch::NoGradGuard ng;
  return pm.forward(in);
}
}  // namespace

TEST(T5PrefixPeftLayout, LoadsPeftFolderAndMatchesItsLogits) {
  auto pm = t5();
  auto base = run(*pm, inputs(""));
  pm->load_adapter(wave2(kAdapter));
  auto ref = load_safetensors(wave2(kAdapter + "/reference.safetensors"));
  for (std::string s : {"", "_single"}) {
    auto out = run(*pm, inputs(s));
    EXPECT_TRUE(close(out.logits, ref.at("logits" + s))) << s;
    EXPECT_TRUE(close(out.loss, ref.at("loss" + s))) << s;
  }
  // Encoder length == num_virtual_tokens: the cross rows stand in for the encoder states.
  auto eq = run(*pm, inputs_enc_len_eq_nv());
  ASSERT_EQ(inputs_enc_len_eq_nv().input_ids.size(1), 5);
  EXPECT_TRUE(close(eq.logits, ref.at("logits_enc_len_eq_nv")));
  EXPECT_TRUE(close(eq.loss, ref.at("loss_enc_len_eq_nv")));
  // The encoder gets no prefix.
  EXPECT_TRUE(torch::equal(run(*pm, inputs("")).encoder_last_hidden_state, base.encoder_last_hidden_state));
}

// Which rows of the file act where (L = 2, so the doubled list gives both layers rows 0..3 of P):
// rows 0, 1 (self k, v) always; rows 2, 3 (cross k, v) only when the encoder length is P.
TEST(T5PrefixPeftLayout, CrossRowsActOnlyWhenEncoderLengthIsP) {
  auto pm = t5();
  pm->load_adapter(wave2(kAdapter));
  auto sd = pm->adapter_state_dict("default");
  auto out = run(*pm, inputs("")), eq = run(*pm, inputs_enc_len_eq_nv());
  const int64_t D = 64;
  for (int64_t r = 0; r < 4; ++r) {
    auto pm2 = t5();
    pm2->load_adapter(wave2(kAdapter));
    auto t = sd.at("prompt_embeddings").clone();
    torch::manual_seed(40 + r);  // random, not constant: a constant shift of every key leaves softmax unchanged
    t.slice(1, r * D, (r + 1) * D).add_(torch::randn({t.size(0), D}) * 0.5);
    pm2->load_adapter_state_dict("default", {{"prompt_embeddings", t}}, "test");
    const bool cross = r >= 2;
    EXPECT_EQ(torch::equal(run(*pm2, inputs("")).logits, out.logits), cross) << "row " << r;
    EXPECT_GT(max_diff(run(*pm2, inputs_enc_len_eq_nv()).logits, eq.logits), 1e-5) << "row " << r;
  }
}

TEST(T5PrefixPeftLayout, SavesPeftsKeysShapesAndConfig) {
  const auto fx_cfg = read_json(wave2(kAdapter + "/adapter_config.json"));
  const auto fx_w = load_safetensors(wave2(kAdapter + "/adapter_model.safetensors"));
  // A fresh adapter of the same size (p-tuning v2 = prefix tuning without the projection).
  auto pm = t5();
  pm->add_adapter("default", method_config("p-tuning-v2", {{"num_virtual_tokens", 5}}));
  EXPECT_EQ(pm->trainable_report().trainable, 5 * 2 * 2 * 64);  // P x (L x k, v x d_model)
  auto dir = test::temp_dir("t5_prefix_peft_save");
  pm->save_adapter(dir);
  auto cfg = read_json(dir + "/adapter_config.json");
  std::set<std::string> fx_keys, keys;
  for (auto& kv : fx_cfg.items()) fx_keys.insert(kv.key());
  for (auto& kv : cfg.items()) keys.insert(kv.key());
  EXPECT_EQ(keys, fx_keys);
  for (auto& kv : fx_cfg.items())
    if (kv.key() != "base_model_name_or_path" && kv.key() != "inference_mode")
      EXPECT_EQ(cfg[kv.key()], kv.value()) << kv.key();
  EXPECT_FALSE(std::filesystem::exists(dir + "/peft_cpp_config.json"));  // nothing peft would not read
  auto w = load_safetensors(dir + "/adapter_model.safetensors");
  ASSERT_EQ(w.size(), fx_w.size());
  for (auto& [k, t] : fx_w) {
    ASSERT_TRUE(w.count(k)) << k;
    EXPECT_EQ(w.at(k).sizes(), t.sizes()) << k;
  }
  // peft's folder, loaded and saved again: the same tensor, bit for bit; the copy reloads.
  auto pf = t5();
  pf->load_adapter(wave2(kAdapter));
  auto dir2 = test::temp_dir("t5_prefix_peft_resave");
  pf->save_adapter(dir2);
  EXPECT_TRUE(torch::equal(load_safetensors(dir2 + "/adapter_model.safetensors").at("prompt_embeddings"),
                           fx_w.at("prompt_embeddings")));
  auto again = t5();
  again->load_adapter(dir2);
  EXPECT_TRUE(torch::equal(run(*again, inputs("")).logits, run(*pf, inputs("")).logits));
}

// Greedy decoding with the KV cache (the prefix is its start) equals argmax of uncached forwards,
// for encoder lengths != P and == P (the cross entries then stay the prefix).
TEST(T5PrefixPeftLayout, CachedGreedyEqualsUncached) {
  auto pm = t5();
  pm->load_adapter(wave2(kAdapter));
  torch::NoGradGuard ng;
  for (const auto& in : {inputs(""), inputs_enc_len_eq_nv()}) {
    GenerateOptions o;
    o.max_new_tokens = 5;
    o.eos_token_id = 1000;  // never produced: every row runs the full length
    auto r = generate_seq2seq(*pm->model, in.input_ids, in.attention_mask, o,
                              [&](const ModelInput& x) { return pm->forward(x); });
    ASSERT_EQ(r.sequences.size(1), 1 + o.max_new_tokens);
    for (int64_t j = 0; j < o.max_new_tokens; ++j) {
      ModelInput mi;
      mi.input_ids = in.input_ids;
      mi.attention_mask = in.attention_mask;
      mi.decoder_input_ids = r.sequences.slice(1, 0, j + 1);
      auto next = pm->forward(mi).logits.select(1, j).argmax(-1);
      EXPECT_TRUE(torch::equal(next, r.sequences.select(1, j + 1))) << "S " << in.input_ids.size(1) << " step " << j;
    }
  }
}

TEST(T5PrefixPeftLayout, GradientsMatchFiniteDifferences) {
  auto pf = t5(torch::kFloat64);
  pf->add_adapter("default", method_config("p-tuning-v2", {{"num_virtual_tokens", 3}}));
  pf->to(torch::kFloat64);
  peft::test::expect_gradients_match_finite_differences(*pf, inputs("_single"), "t5 prefix (peft layout)");
}

// Shapes peft cannot serve are refused, naming the option that can.
TEST(T5PrefixPeftLayout, RefusesWhatPeftWouldMisbuild) {
  auto cfg = read_json(wave2("models/t5/config.json"));
  for (auto edit : {std::function<void(nlohmann::json&)>([](nlohmann::json& c) { c["num_decoder_layers"] = 3; }),
                    std::function<void(nlohmann::json&)>([](nlohmann::json& c) { c["d_kv"] = 8; })}) {
    auto c = cfg;
    edit(c);
    auto pm = std::make_shared<PeftModel>(create_model(c));
    auto msg = error_of([&] { pm->add_adapter("default", method_config("p-tuning-v2", {{"num_virtual_tokens", 2}})); });
    EXPECT_NE(msg.find("prefix_layout"), std::string::npos) << msg;
    // The paper's layout serves them.
    auto pm2 = std::make_shared<PeftModel>(create_model(c));
    pm2->add_adapter("default", method_config("p-tuning-v2", {{"num_virtual_tokens", 2}, {"prefix_layout", "paper"}}));
  }
  auto pm = t5();
  auto msg = error_of([&] { pm->add_adapter("default", method_config("p-tuning-v2", {{"prefix_layout", "both"}})); });
  EXPECT_NE(msg.find("prefix_layout"), std::string::npos) << msg;
}

// The explicit paper layout is kept by a save / load round trip (peft_cpp_config.json).
TEST(T5PrefixPaperLayout, OptionIsSavedAndReloaded) {
  auto pm = t5();
  pm->add_adapter("default", method_config("p-tuning-v2", {{"num_virtual_tokens", 3}, {"prefix_layout", "paper"}}));
  EXPECT_EQ(pm->trainable_report().trainable, 3 * 3 * 2 * 2 * 64);
  peft::test::randomize(*pm, 0.5);
  auto dir = test::temp_dir("t5_prefix_paper");
  pm->save_adapter(dir);
  EXPECT_EQ(read_json(dir + "/peft_cpp_config.json").value("prefix_layout", ""), "paper");
  EXPECT_EQ(read_json(dir + "/adapter_config.json")["num_transformer_submodules"], 3);
  auto pm2 = t5();
  pm2->load_adapter(dir);
  EXPECT_TRUE(torch::equal(run(*pm2, inputs("")).logits, run(*pm, inputs("")).logits));
}
