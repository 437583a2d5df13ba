// T5 (original, tied head, relu FFN) and T5 v1.1 (untied, gated-gelu) against the transformers
// fixtures tests/fixtures/hf/models/{t5,t5_v1_1}; incremental decoding with the KV cache.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

#include "peft/io.h"
#include "peft/model.h"
#include "test_util.h"

using namespace peft;

namespace {
void expect_close(const torch::Tensor& a, const torch::Tensor& b, double atol, double rtol, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  auto diff = (a - b).abs();
  auto tol = atol + rtol * b.abs();
  EXPECT_TRUE((diff <= tol).all().item<bool>()) << what << ": max abs diff " << diff.max().item<double>();
}

std::string fixture(const std::string& name) { return test::source_path("tests/fixtures/hf/models/" + name); }

void check_fixture(const std::string& name) {
  auto model = load_model(fixture(name));
  model->eval();
  EXPECT_TRUE(model->is_encoder_decoder());
  EXPECT_EQ(model->task(), TaskType::Seq2SeqLM);
  auto in = load_safetensors(fixture(name) + "/inputs.safetensors");
  auto ref = load_safetensors(fixture(name) + "/reference.safetensors");
  ModelInput mi;
  mi.input_ids = in["input_ids"];
  mi.attention_mask = in["attention_mask"];
  mi.decoder_input_ids = in["decoder_input_ids"];
  mi.labels = in["labels"];
  mi.output_hidden_states = true;
  torch::NoGradGuard ng;
  auto out = model->forward(mi);
  expect_close(out.logits, ref["logits"], 1e-5, 1e-4, name + " logits");
  EXPECT_NEAR(out.loss.item<double>(), ref["loss"].item<double>(), 1e-5) << name;
  expect_close(out.encoder_last_hidden_state, ref["encoder_last_hidden_state"], 1e-5, 1e-4, name + " encoder");
  ASSERT_EQ(out.hidden_states.size(), 3u);
  ASSERT_EQ(out.encoder_hidden_states.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    auto d = "decoder_hidden_states." + std::to_string(i), e = "encoder_hidden_states." + std::to_string(i);
    expect_close(out.hidden_states[i], ref[d], 1e-5, 1e-4, name + " " + d);
    expect_close(out.encoder_hidden_states[i], ref[e], 1e-5, 1e-4, name + " " + e);
  }
  // Only labels: decoder_input_ids are the labels shifted right (start 0, -100 -> pad 0), which
  // is exactly how the fixture's decoder_input_ids were made.
  ModelInput lo;
  lo.input_ids = in["input_ids"];
  lo.attention_mask = in["attention_mask"];
  lo.labels = in["labels"];
  auto out2 = model->forward(lo);
  expect_close(out2.logits, ref["logits"], 1e-5, 1e-4, name + " logits from labels");
  EXPECT_NEAR(out2.loss.item<double>(), ref["loss"].item<double>(), 1e-5) << name;
}

void check_incremental(const std::string& name) {
  auto model = load_model(fixture(name));
  model->eval();
  auto in = load_safetensors(fixture(name) + "/inputs.safetensors");
  torch::NoGradGuard ng;
  ModelInput full;
  full.input_ids = in["input_ids"];
  full.attention_mask = in["attention_mask"];
  full.decoder_input_ids = in["decoder_input_ids"];
  auto ref = model->forward(full);
  // Encoder once, then the decoder one token at a time (then a 2-token chunk) with the cache.
  KVCache cache;
  std::vector<torch::Tensor> steps;
  auto dec = in["decoder_input_ids"];
  for (int64_t t = 0; t < 2; ++t) {
    ModelInput s;
    s.encoder_hidden_states = ref.encoder_last_hidden_state;
    s.attention_mask = in["attention_mask"];
    s.decoder_input_ids = dec.slice(1, t, t + 1);
    s.cache = &cache;
    steps.push_back(model->forward(s).logits);
    EXPECT_EQ(cache.length(), t + 1);
    ASSERT_EQ(cache.cross_k.size(), 2u);
    EXPECT_EQ(cache.cross_k[0].size(2), 8);
  }
  auto cross0 = cache.cross_k[0];
  ModelInput s;
  s.encoder_hidden_states = ref.encoder_last_hidden_state;
  s.attention_mask = in["attention_mask"];
  s.decoder_input_ids = dec.slice(1, 2, 4);
  s.cache = &cache;
  steps.push_back(model->forward(s).logits);
  EXPECT_EQ(cache.length(), 4);
  EXPECT_TRUE(cache.cross_k[0].is_same(cross0)) << "cross-attention keys must be computed once";
  expect_close(torch::cat(steps, 1), ref.logits, 1e-5, 1e-4, name + " incremental");
}
}  // namespace

TEST(T5Model, MatchesTransformersFixture) { check_fixture("t5"); }
TEST(T5Model, V11MatchesTransformersFixture) { check_fixture("t5_v1_1"); }
TEST(T5Model, IncrementalDecodingMatchesFullForward) { check_incremental("t5"); }
TEST(T5Model, V11IncrementalDecodingMatchesFullForward) { check_incremental("t5_v1_1"); }

TEST(T5Model, SlotsNamesAndRoles) {
  auto model = load_model(fixture("t5_v1_1"));
  std::set<std::string> slots;
  for (auto& s : find_slots(*model)) slots.insert(s.path);
  for (const char* p :
       {"encoder.block.0.layer.0.SelfAttention.q", "encoder.block.1.layer.0.SelfAttention.v",
        "encoder.block.0.layer.0.layer_norm", "encoder.block.0.layer.1.DenseReluDense",
        "encoder.block.0.layer.1.DenseReluDense.wi_0", "encoder.block.0.layer.1.DenseReluDense.wi_1",
        "encoder.block.0.layer.1.DenseReluDense.wo", "encoder.block.0.layer.1.DenseReluDense.act",
        "decoder.block.1.layer.1.EncDecAttention.k", "decoder.block.1.layer.2.DenseReluDense.wo",
        "decoder.block.0.layer.2.layer_norm", "encoder.final_layer_norm", "decoder.final_layer_norm", "lm_head"})
    EXPECT_TRUE(slots.count(p)) << p;
  EXPECT_EQ(model->layers_pattern(), "block");
  EXPECT_EQ(model->roles().at("mlp.gate"), "wi_0");
  EXPECT_EQ(model->dims().num_decoder_layers, 2);
  EXPECT_EQ(model->dims().head_dim, 16);
  auto ids = torch::tensor({{5, 6}}, torch::kLong);
  EXPECT_TRUE(torch::equal(model->embed_tokens(ids), model->named_parameters()["shared.weight"].index({ids})));

  auto tied = load_model(fixture("t5"));
  EXPECT_FALSE(tied->state_dict().count("lm_head.weight"));
  EXPECT_TRUE(tied->state_dict().count("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"));
  EXPECT_FALSE(tied->state_dict().count("decoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"));
  EXPECT_TRUE(tied->state_dict().count("encoder.block.1.layer.1.DenseReluDense.wi.weight"));
}

TEST(T5Model, SaveAndReloadRoundTrip) {
  auto model = load_model(fixture("t5"));
  model->eval();
  auto dir = test::temp_dir("t5_save");
  model->save_pretrained(dir);
  auto again = load_model(dir);
  again->eval();
  auto in = load_safetensors(fixture("t5") + "/inputs.safetensors");
  ModelInput mi;
  mi.input_ids = in["input_ids"];
  mi.decoder_input_ids = in["decoder_input_ids"];
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(model->forward(mi).logits, again->forward(mi).logits));
}

TEST(T5Model, RejectsBadConfig) {
  auto cfg = read_json(fixture("t5_v1_1") + "/config.json");
  cfg["dense_act_fn"] = "bogus_act";
  EXPECT_THROW(create_model(cfg), peft::Error);
  cfg = read_json(fixture("t5") + "/config.json");
  cfg.erase("dense_act_fn");
  cfg.erase("is_gated_act");
  cfg["feed_forward_proj"] = "very-gated-gelu";
  try {
    create_model(cfg);
    FAIL() << "expected an error";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("feed_forward_proj"), std::string::npos) << e.what();
  }
  cfg = read_json(fixture("t5") + "/config.json");
  cfg.erase("d_kv");
  try {
    create_model(cfg);
    FAIL() << "expected an error";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find("d_kv"), std::string::npos) << e.what();
  }
  // A decoder with nothing to decode.
  auto model = create_model(read_json(fixture("t5") + "/config.json"));
  ModelInput mi;
  mi.input_ids = torch::tensor({{4, 5}}, torch::kLong);
  EXPECT_THROW(model->forward(mi), peft::Error);
}
