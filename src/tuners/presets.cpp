// Presets for `peft assess`: one learning rate per method family and the registry's preset of
// each method (`peft methods` shows its trainable count), so every method gets the same steps,
// batch and data. The rates sit in the papers' ranges, scaled for small models trained for a
// few hundred steps (docs/ASSESSMENT.md lists them with their sources):
//   LoRA family   4e-3  (Hu et al. 2022 use 2e-4 on GPT-2 M over 5 epochs of E2E; a model of
//                        260K parameters and a 300-step budget needs ~10-20x: recipes/e2e_lora.json)
//   VeRA          4e-2  (Kopiczko et al. 2024, sec. 4: VeRA's scaling vectors take ~10x LoRA's rate)
//   (IA)^3        1e-2  (Liu et al. 2022, sec. 3.3: 3e-3 for T0-3B; larger for tiny models)
//   adapters      4e-3  (Houlsby et al. 2019: 1e-4..1e-3 on BERT; as LoRA for tiny models)
//   prompts       3e-2  (Lester et al. 2021 use 0.3 with Adafactor; Li & Liang 2021 5e-5..8e-5 with
//                        a reparameterization MLP; without it soft prompts want large steps)
//   partial       4e-3  (BitFit, LN tuning: Ben Zaken et al. 2022 use 1e-4..1e-3 on BERT)
//   full          1e-3  (every block weight trains: a smaller step than any adapter)
#include "peft/presets.h"

#include <algorithm>

#include "peft/error.h"
#include "peft/tuner.h"

namespace peft {
namespace {

double family_rate(const std::string& method) {
  if (method == "vera") return 4e-2;
  if (method == "ia3") return 1e-2;
  if (method == "prompt-tuning" || method == "p-tuning" || method == "prefix-tuning" || method == "p-tuning-v2")
    return 3e-2;
  return 4e-3;  // every other family (see the table above)
}

// Methods that need a choice the registry leaves open, or a budget the small presets do not
// reach, get explicit keys here; the rest run as `peft methods` describes them.
nlohmann::json method_keys(const std::string& method) {
  if (method == "bitfit") return {{"add_missing_biases", true}};  // Llama has no biases to train
  if (method == "compacter" || method == "compacter++") return {{"phm_dim", 2}};
  return nlohmann::json::object();
}

}  // namespace

std::vector<std::string> assessment_methods() {
  static const std::vector<std::string> order = {"additive", "partial", "reparameterized", "hybrid", "unified"};
  std::vector<std::string> out;
  for (auto& fam : order)
    for (auto& c : method_cards())
      if (c.family == fam && c.name != "composite") out.push_back(c.name);  // composite needs components
  return out;
}

AssessmentPreset assessment_preset(const std::string& name, int64_t num_layers) {
  AssessmentPreset p;
  p.label = name;
  if (name == kFullFineTuning) {
    // The reference row: every transformer block and the head train (layer-freeze with nothing
    // frozen); the embeddings stay as they are (docs/ASSESSMENT.md says why this is the row).
    PEFT_CHECK(num_layers > 0, "assess: the model reports ", num_layers, " layers");
    p.method = "layer-freeze";
    p.keys = {{"num_trainable_layers", num_layers}, {"learning_rate", 1e-3}};
    return p;
  }
  const MethodCard* card = method_card(name);
  PEFT_CHECK(card, "assess: unknown method '", name, "' (see `peft methods`)");
  p.method = name;
  p.keys = method_keys(name);
  p.keys["learning_rate"] = family_rate(name);
  return p;
}

}  // namespace peft
