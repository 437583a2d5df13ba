// Qwen2 (q/k/v bias, no o_proj bias) and Mistral (sliding-window attention) against the wave-2
// transformers 4.37.2 fixtures (tests/fixtures/wave2/models/{qwen2,mistral}, eager attention; see
// the README there, section 1): logits, loss and hidden states on all three input files, and
// cached greedy decoding equal to uncached decoding past the window.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/io.h"
#include "peft/model.h"
#include "test_util.h"

using namespace peft;

namespace {
std::string wave2(const std::string& rel) { return test::source_path("tests/fixtures/wave2/" + rel); }

::testing::AssertionResult close(const torch::Tensor& a, const torch::Tensor& b, double atol = 1e-5, double rtol = 1e-4) {
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  auto diff = (a - b).abs();
  if ((diff <= atol + rtol * b.abs()).all().item<bool>()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs diff " << diff.max().item<double>();
}

ModelOutput run(PretrainedModel& m, const TensorMap& in, bool hidden = true) {
  ModelInput mi;
  mi.input_ids = in.at("input_ids");
  mi.attention_mask = in.at("attention_mask");
  mi.labels = in.at("labels");
  mi.output_hidden_states = hidden;
  torch::NoGradGuard ng;
  return m.forward(mi);
}

void check_against_reference(const std::string& name, PretrainedModel& model) {
  for (std::string suffix : {"", "_single", "_long"}) {
    auto in = load_safetensors(wave2("models/" + name + "/inputs" + suffix + ".safetensors"));
    auto ref = load_safetensors(wave2("models/" + name + "/reference" + suffix + ".safetensors"));
    auto out = run(model, in);
    EXPECT_TRUE(close(out.logits, ref.at("logits"))) << name << suffix << " logits";
    EXPECT_TRUE(close(out.loss, ref.at("loss"))) << name << suffix << " loss";
    ASSERT_EQ(out.hidden_states.size(), 3u) << name << suffix;  // embeddings, block 0, after the final norm
    for (size_t i = 0; i < out.hidden_states.size(); ++i)
      EXPECT_TRUE(close(out.hidden_states[i], ref.at("hidden_states." + std::to_string(i))))
          << name << suffix << " hidden_states." << i;
  }
}

ModelPtr with_config(const std::string& name, const std::function<void(nlohmann::json&)>& edit) {
  auto cfg = read_json(wave2("models/" + name + "/config.json"));
  edit(cfg);
  auto m = create_model(cfg);
  m->load_weights(load_safetensors(wave2("models/" + name + "/model.safetensors")), name);
  m->eval();
  return m;
}

double max_logit_diff(PretrainedModel& m, const std::string& name, const std::string& suffix) {
  auto in = load_safetensors(wave2("models/" + name + "/inputs" + suffix + ".safetensors"));
  auto ref = load_safetensors(wave2("models/" + name + "/reference" + suffix + ".safetensors"));
  return (run(m, in, false).logits - ref.at("logits")).abs().max().item<double>();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const peft::Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Qwen2Model, MatchesTransformersOnAllInputs) {
  auto model = load_model(wave2("models/qwen2"));
  model->eval();
  // The fixture's q/k/v biases are not zero, o_proj has none.
  auto sd = model->state_dict();
  EXPECT_TRUE(sd.count("model.layers.0.self_attn.q_proj.bias"));
  EXPECT_TRUE(sd.count("model.layers.1.self_attn.v_proj.bias"));
  EXPECT_FALSE(sd.count("model.layers.0.self_attn.o_proj.bias"));
  EXPECT_GT(sd.at("model.layers.0.self_attn.k_proj.bias").abs().max().item<double>(), 1e-3);
  check_against_reference("qwen2", *model);
}

TEST(Qwen2Model, MissingOrExtraBiasIsAClearError) {
  auto w = load_safetensors(wave2("models/qwen2/model.safetensors"));
  auto cfg = read_json(wave2("models/qwen2/config.json"));
  {
    auto dir = test::temp_dir("qwen2_nobias");
    auto w2 = w;
    w2.erase("model.layers.1.self_attn.q_proj.bias");
    save_safetensors(dir + "/model.safetensors", w2);
    write_json(dir + "/config.json", cfg);
    auto msg = error_of([&] { load_model(dir); });
    EXPECT_NE(msg.find("model.layers.1.self_attn.q_proj.bias"), std::string::npos) << msg;
    EXPECT_NE(msg.find("missing"), std::string::npos) << msg;
  }
  {
    auto dir = test::temp_dir("qwen2_obias");
    auto w2 = w;
    w2["model.layers.0.self_attn.o_proj.bias"] = torch::zeros({48});
    save_safetensors(dir + "/model.safetensors", w2);
    write_json(dir + "/config.json", cfg);
    auto msg = error_of([&] { load_model(dir); });
    EXPECT_NE(msg.find("model.layers.0.self_attn.o_proj.bias"), std::string::npos) << msg;
  }
}

TEST(MistralModel, SlidingWindowMatchesTransformersOnAllInputs) {
  auto model = load_model(wave2("models/mistral"));
  model->eval();
  check_against_reference("mistral", *model);
}

// The fixture's inputs are longer than the window: no window, or one a key wider (what 4.37's
// flash-attention path does), moves the logits far outside the tolerance (README section 1).
TEST(MistralModel, WindowOfOtherWidthsDisagrees) {
  auto none = with_config("mistral", [](nlohmann::json& c) { c["sliding_window"] = nullptr; });
  auto wider = with_config("mistral", [](nlohmann::json& c) { c["sliding_window"] = 7; });
  for (std::string s : {"", "_single", "_long"}) {
    EXPECT_GT(max_logit_diff(*none, "mistral", s), 0.1) << s;
    EXPECT_GT(max_logit_diff(*wider, "mistral", s), 0.1) << s;
  }
}

// transformers 4.37.2 eager Qwen2 builds the window mask from sliding_window whatever
// use_sliding_window / max_window_layers say (they steer only the flash-attention path).
TEST(Qwen2Model, EagerWindowFollowsSlidingWindowOnly) {
  auto off = with_config("qwen2", [](nlohmann::json& c) { c["sliding_window"] = 5; });
  auto on = with_config("qwen2", [](nlohmann::json& c) {
    c["sliding_window"] = 5;
    c["use_sliding_window"] = true;
    c["max_window_layers"] = 1;
  });
  auto in = load_safetensors(wave2("models/qwen2/inputs_long.safetensors"));
  auto a = run(*off, in, false).logits, b = run(*on, in, false).logits;
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_GT(max_logit_diff(*off, "qwen2", "_long"), 0.1);  // the window of 5 is in effect
  // The fixture's own window (4096) exceeds every input: no effect.
  auto none = with_config("qwen2", [](nlohmann::json& c) { c["sliding_window"] = nullptr; });
  EXPECT_LT(max_logit_diff(*none, "qwen2", "_long"), 1e-4);
}

// Greedy decoding of every unpadded fixture row for 12 tokens (beyond the window of 6): with the
// KV cache (one token per step) the ids equal those of recomputing the whole sequence each step,
// and every step's logits equal the uncached ones.
TEST(MistralModel, CachedGreedyEqualsUncachedPastTheWindow) {
  auto model = load_model(wave2("models/mistral"));
  model->eval();
  torch::NoGradGuard ng;
  const int64_t window = 6, steps = 12;
  for (std::string s : {"", "_single", "_long"}) {
    auto in = load_safetensors(wave2("models/mistral/inputs" + s + ".safetensors"));
    auto ids = in.at("input_ids"), mask = in.at("attention_mask");
    for (int64_t r = 0; r < ids.size(0); ++r) {
      const int64_t n = mask[r].sum().item<int64_t>();
      auto prompt = ids[r].slice(0, 0, n).unsqueeze(0);
      ASSERT_GT(n + steps, 2 * window);
      auto full = prompt.clone();
      KVCache cache;
      auto step_in = prompt;
      for (int64_t t = 0; t < steps; ++t) {
        ModelInput a;
        a.input_ids = full;
        auto want = model->forward(a).logits.select(1, full.size(1) - 1);
        ModelInput b;
        b.input_ids = step_in;
        b.cache = &cache;
        auto got = model->forward(b).logits.select(1, step_in.size(1) - 1);
        ASSERT_TRUE(close(got, want)) << s << " row " << r << " step " << t;
        auto next_full = want.argmax(-1), next_cached = got.argmax(-1);
        ASSERT_EQ(next_full.item<int64_t>(), next_cached.item<int64_t>()) << s << " row " << r << " step " << t;
        full = torch::cat({full, next_full.view({1, 1})}, 1);
        step_in = next_cached.view({1, 1});
      }
      EXPECT_EQ(cache.length(), n + steps - 1);
    }
  }
}

TEST(MistralModel, BadSlidingWindowIsAClearError) {
  auto cfg = read_json(wave2("models/mistral/config.json"));
  cfg["sliding_window"] = 0;
  auto msg = error_of([&] { create_model(cfg); });
  EXPECT_NE(msg.find("sliding_window"), std::string::npos) << msg;
}
