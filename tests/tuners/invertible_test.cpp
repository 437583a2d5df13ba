// MAD-X's invertible adapters (src/tuners/invertible.cpp): the NICE coupling against its
// formula computed here from the saved tensors, the inverse undoing it, where the model applies
// each direction (the embeddings entering block 0; the head's input), identity at init, save ->
// load, the swap of language adapters, and the refusals. The property matrix row
// "pfeiffer-inv" adds the closed-form count, float64 finite differences and the frozen base.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "peft/error.h"
#include "peft/tuner.h"
#include "test_util.h"
#include "tuners/invertible.h"
#include "tuners/tuner_test_util.h"

namespace peft::test {
namespace {

PeftModelPtr with_language_adapter(bool init_weights) {
  auto pm = fixture_peft_model("llama");
  pm->add_adapter("lang", method_config("pfeiffer-inv", {{"init_weights", init_weights}}));
  return pm;
}

InvertibleAdapter& block_of(PeftModel& pm, const std::string& a) {
  auto* b = dynamic_cast<InvertibleAdapter*>(pm.adapter(a).input.get());
  EXPECT_NE(b, nullptr);
  return *b;
}

TEST(InvertibleAdapter, CouplingIsTheNiceFormulaAndItsInverseUndoesIt) {
  auto pm = with_language_adapter(false);
  auto& b = block_of(*pm, "lang");
  auto t = b.saved_tensors();
  ASSERT_EQ(t.size(), 8u);
  auto lin = [&](const std::string& n, const torch::Tensor& x) {
    return x.matmul(t.at("invertible_adapter." + n + ".weight").t()) + t.at("invertible_adapter." + n + ".bias");
  };
  auto net = [&](const std::string& w, const torch::Tensor& x) { return lin(w + ".2", torch::relu(lin(w + ".0", x))); };
  torch::NoGradGuard ng;
  auto x = torch::randn({2, 5, 64});
  auto x1 = x.slice(-1, 0, 32), x2 = x.slice(-1, 32);
  auto o1 = x1 + net("F", x2);  // Dinh et al. 2015, sec. 3.2, twice: o1 = x1 + F(x2), o2 = x2 + G(o1)
  auto o2 = x2 + net("G", o1);
  auto y = b.couple(x, false);
  EXPECT_TRUE(torch::allclose(y, torch::cat({o1, o2}, -1), 1e-6, 1e-6)) << max_diff(y, torch::cat({o1, o2}, -1));
  EXPECT_GT(max_diff(y, x), 1e-2);
  EXPECT_TRUE(torch::allclose(b.couple(y, true), x, 1e-5, 1e-5)) << max_diff(b.couple(y, true), x);
  // F's input width is the second half, G's the first; each maps to half / 2 and back.
  EXPECT_EQ(t.at("invertible_adapter.F.0.weight").sizes(), (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(t.at("invertible_adapter.G.2.weight").sizes(), (std::vector<int64_t>{32, 16}));
}

TEST(InvertibleAdapter, TheModelCouplesTheEmbeddingsAndUncouplesTheHeadInput) {
  auto pm = with_language_adapter(false);
  auto in = fixture_input("llama");
  in.output_hidden_states = true;
  torch::NoGradGuard ng;
  auto out = pm->forward(in);
  auto& b = block_of(*pm, "lang");
  // hidden_states[0]: what enters block 0 = A_inv(E[ids]).
  auto emb = b.couple(pm->model->embed_tokens(in.input_ids), false);
  EXPECT_TRUE(torch::allclose(out.hidden_states.front(), emb, 1e-6, 1e-6)) << max_diff(out.hidden_states.front(), emb);
  // The head reads A_inv^{-1}(norm(h)): the wrapper at the final norm (role "norm.final", llama's
  // "norm") returns the inverse of its norm's output.
  int wrappers = 0;
  for (auto& [path, t] : pm->tuner_layers()) {
    if (t->method() != "invertible_adapter") continue;
    ++wrappers;
    EXPECT_EQ(path, "model.norm");
    auto h = torch::randn({2, 3, 64});
    auto want = b.couple(t->base_forward(h), true);
    EXPECT_TRUE(torch::allclose(t->forward(h), want, 1e-6, 1e-6)) << max_diff(t->forward(h), want);
  }
  EXPECT_EQ(wrappers, 1);
  pm->disable_adapters(true);
  auto base = pm->forward(in);
  pm->disable_adapters(false);
  EXPECT_GT(max_diff(out.logits, base.logits), 1e-3);
  // Identity at init (the coupling networks' last Linears are zero): the base, bit for bit.
  EXPECT_TRUE(torch::equal(with_language_adapter(true)->forward(in).logits, base.logits));
}

// Two language adapters with their own invertible parts: swapping them (MAD-X's zero-shot step)
// changes exactly which coupling acts; save -> load is bit-exact; deleting one removes its wrapper.
TEST(InvertibleAdapter, LanguageAdaptersSwapSaveAndDelete) {
  auto pm = with_language_adapter(false);
  pm->add_adapter("other", method_config("pfeiffer-inv", {{"init_weights", false}}));
  pm->set_adapter(std::vector<std::string>{"lang", "other"});
  randomize(*pm, 0.2);
  auto in = fixture_input("llama");
  torch::NoGradGuard ng;
  pm->set_adapter("lang");
  auto a = pm->forward(in).logits;
  pm->set_adapter("other");
  auto o = pm->forward(in).logits;
  EXPECT_GT(max_diff(a, o), 1e-3);
  auto dir = temp_dir("invertible_save");
  pm->set_adapter("lang");
  pm->save_adapter(dir, "lang");
  auto saved = load_safetensors(dir + "/adapter_model.safetensors");
  EXPECT_EQ(saved.count("invertible_adapter.F.0.weight"), 1u);
  auto pm2 = fixture_peft_model("llama");
  pm2->load_adapter(dir, "lang");
  EXPECT_TRUE(torch::equal(pm2->forward(in).logits, a));
  pm->delete_adapter("lang");
  pm->set_adapter("other");
  EXPECT_TRUE(torch::equal(pm->forward(in).logits, o));
  pm->delete_adapter("other");
  EXPECT_TRUE(pm->tuner_layers().empty());
}

TEST(InvertibleAdapter, RefusedWithoutAFinalNormAndForUnknownKinds) {
  auto pm = fixture_peft_model("llama");
  auto msg = error_of([&] { pm->add_adapter("x", method_config("pfeiffer", {{"inv_adapter", "glow"}})); });
  EXPECT_NE(msg.find("field 'inv_adapter' (BOTTLENECK) must be one of null, \"nice\""), std::string::npos) << msg;
  auto bert = fixture_peft_model("bert_cls");
  msg = error_of([&] { bert->add_adapter("x", method_config("pfeiffer-inv")); });
  EXPECT_NE(msg.find("invertible adapters need a decoder with a final norm"), std::string::npos) << msg;
  EXPECT_TRUE(bert->adapters().empty());
  EXPECT_TRUE(bert->tuner_layers().empty());
}

}  // namespace
}  // namespace peft::test
