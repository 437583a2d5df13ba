// Helpers for the tests against the wave-2 reference fixtures (tests/fixtures/wave2, made with
// transformers 4.37.2 + peft 0.13.2; its README states each convention): base models, inputs,
// adapter folders and the comparison of a loaded adapter with peft's recorded outputs.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>
#include <string>
#include <vector>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"

namespace peft::test {

inline std::string wave2_path(const std::string& rel) { return source_path("tests/fixtures/wave2/" + rel); }

/// models/<base>/inputs<suffix>.safetensors ("" or "_single").
inline ModelInput wave2_input(const std::string& base, const std::string& suffix = "") {
  auto in = load_safetensors(wave2_path("models/" + base + "/inputs" + suffix + ".safetensors"));
  ModelInput mi;
  mi.input_ids = in.at("input_ids").clone();
  mi.attention_mask = in.at("attention_mask").clone();
  if (in.count("decoder_input_ids")) mi.decoder_input_ids = in.at("decoder_input_ids").clone();
  if (in.count("labels")) mi.labels = in.at("labels").clone();
  return mi;
}

/// The wave-2 base model `base` in eval mode, wrapped without adapters.
inline PeftModelPtr wave2_peft_model(const std::string& base) {
  auto m = load_model(wave2_path("models/" + base));
  m->eval();
  return std::make_shared<PeftModel>(m);
}

/// The README's tolerance for logits: atol 1e-5, rtol 1e-4.
inline void expect_logits_close(const torch::Tensor& got, const torch::Tensor& want, const std::string& label) {
  ASSERT_EQ(got.sizes(), want.sizes()) << label;
  EXPECT_TRUE(torch::allclose(got, want, 1e-4, 1e-5)) << label << ": max |diff| " << (got - want).abs().max().item<double>();
}

/// Our outputs on inputs{,_single} against reference.safetensors' logits*/loss* (prefix `key`:
/// "" or "merged_").
inline void expect_reference_outputs(PeftModel& pm, const std::string& base, const TensorMap& ref,
                                     const std::string& key, const std::string& label) {
  torch::NoGradGuard ng;
  for (std::string suffix : {"", "_single"}) {
    if (!ref.count(key + "logits" + suffix)) continue;
    auto out = pm.forward(wave2_input(base, suffix));
    expect_logits_close(out.logits, ref.at(key + "logits" + suffix), label + " " + key + "logits" + suffix);
    if (ref.count(key + "loss" + suffix))
      EXPECT_NEAR(out.loss.item<double>(), ref.at(key + "loss" + suffix).item<double>(), 1e-5) << label << suffix;
  }
}

/// Key -> shape of a safetensors file.
inline std::map<std::string, std::vector<int64_t>> tensor_shapes(const std::string& file) {
  std::map<std::string, std::vector<int64_t>> out;
  for (auto& kv : load_safetensors(file)) out[kv.first] = kv.second.sizes().vec();
  return out;
}

/// A target_modules value as a set (peft writes a Python set: its order is the hash order).
inline std::set<std::string> name_set(const nlohmann::json& j) {
  std::set<std::string> s;
  if (j.is_array())
    for (auto& v : j) s.insert(v.get<std::string>());
  return s;
}

/// The adapter_config.json we wrote equals peft's field for field (the order of list-valued
/// target/feedforward sets ignored; base_model_name_or_path is where each was loaded from).
inline void expect_same_config(const nlohmann::json& theirs, const nlohmann::json& ours, const std::string& label) {
  std::set<std::string> k1, k2;
  for (auto& kv : theirs.items()) k1.insert(kv.key());
  for (auto& kv : ours.items()) k2.insert(kv.key());
  EXPECT_EQ(k1, k2) << label;
  for (auto& kv : theirs.items()) {
    const auto& k = kv.key();
    if (k == "base_model_name_or_path" || !ours.contains(k)) continue;
    if (k == "target_modules" || k == "feedforward_modules") {
      if (kv.value().is_array()) {
        EXPECT_EQ(name_set(kv.value()), name_set(ours[k])) << label << ": " << k << " ours " << ours[k].dump();
        continue;
      }
    }
    EXPECT_EQ(kv.value(), ours[k]) << label << ": field " << k;
  }
}

}  // namespace peft::test
