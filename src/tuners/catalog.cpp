// The method catalog: each user-facing method name with its family in the survey's taxonomy
// (docs/TAXONOMY.md: additive, partial, reparameterized, hybrid, unified) and its paper.
// `peft methods` prints it with facts measured on a model (trainable count, mergeable);
// tests/cli/methods_test.cpp checks that every registered method has a card.
#include <algorithm>

#include "peft/error.h"
#include "peft/tuner.h"

namespace peft {
namespace {

const std::vector<MethodCard>& cards() {
  static const std::vector<MethodCard> c = {
      // Reparameterized
      {"lora", "reparameterized", "Hu et al. 2022, LoRA: Low-Rank Adaptation of Large Language Models (arXiv:2106.09685)"},
      {"rslora", "reparameterized", "Kalajdzievski 2023, A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA (arXiv:2312.03732)"},
      {"dora", "reparameterized", "Liu et al. 2024, DoRA: Weight-Decomposed Low-Rank Adaptation (arXiv:2402.09353)"},
      {"pissa", "reparameterized", "Meng et al. 2024, PiSSA: Principal Singular Values and Singular Vectors Adaptation (arXiv:2404.02948)"},
      {"olora", "reparameterized", "Buyukakyuz 2024, OLoRA: Orthonormal Low-Rank Adaptation (arXiv:2406.01775)"},
      {"loftq", "reparameterized", "Li et al. 2023, LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models (arXiv:2310.08659)"},
      {"lora-fa", "reparameterized", "Zhang et al. 2023, LoRA-FA: Memory-efficient Low-rank Adaptation (arXiv:2308.03303)"},
      {"dylora", "reparameterized", "Valipour et al. 2023, DyLoRA: Dynamic Search-Free Low-Rank Adaptation (arXiv:2210.07558)"},
      {"delta-lora", "reparameterized", "Zi et al. 2023, Delta-LoRA: Fine-Tuning High-Rank Parameters with the Delta of Low-Rank Matrices (arXiv:2309.02411)"},
      {"vera", "reparameterized", "Kopiczko et al. 2024, VeRA: Vector-based Random Matrix Adaptation (arXiv:2310.11454)"},
      {"loha", "reparameterized", "Hyeon-Woo et al. 2022, FedPara: Low-Rank Hadamard Product (arXiv:2108.06098)"},
      {"lokr", "reparameterized", "Edalati et al. 2022, KronA: Parameter-Efficient Tuning with Kronecker Adapter (arXiv:2212.10650)"},
      {"adalora", "reparameterized", "Zhang et al. 2023, AdaLoRA: Adaptive Budget Allocation (arXiv:2303.10512)"},
      // Additive
      {"ia3", "additive", "Liu et al. 2022, (IA)^3: Few-Shot PEFT is Better and Cheaper than In-Context Learning (arXiv:2205.05638)"},
      {"bottleneck", "additive", "Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP (arXiv:1902.00751)"},
      {"houlsby", "additive", "Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP (arXiv:1902.00751)"},
      {"pfeiffer", "additive", "Pfeiffer et al. 2021, AdapterFusion: Non-Destructive Task Composition (arXiv:2005.00247)"},
      {"pfeiffer-inv", "additive", "Pfeiffer et al. 2020, MAD-X: An Adapter-Based Framework for Multi-Task Cross-Lingual Transfer (arXiv:2005.00052)"},
      {"parallel-adapter", "additive", "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning (arXiv:2110.04366)"},
      {"prompt-tuning", "additive", "Lester et al. 2021, The Power of Scale for Parameter-Efficient Prompt Tuning (arXiv:2104.08691)"},
      {"p-tuning", "additive", "Liu et al. 2021, GPT Understands, Too (arXiv:2103.10385)"},
      {"prefix-tuning", "additive", "Li & Liang 2021, Prefix-Tuning: Optimizing Continuous Prompts for Generation (arXiv:2101.00190)"},
      {"p-tuning-v2", "additive", "Liu et al. 2022, P-Tuning v2: Prompt Tuning Can Be Comparable to Fine-tuning (arXiv:2110.07602)"},
      {"compacter", "additive", "Karimi Mahabadi et al. 2021, Compacter: Efficient Low-Rank Hypercomplex Adapter Layers (arXiv:2106.04647)"},
      {"compacter++", "additive", "Karimi Mahabadi et al. 2021, Compacter: Efficient Low-Rank Hypercomplex Adapter Layers (arXiv:2106.04647)"},
      {"hadamard", "additive", "Chen et al. 2023, Hadamard Adapter: An Extreme Parameter-Efficient Adapter Tuning Method for Pre-trained Language Models (CIKM 2023)"},
      {"lst", "additive", "Sung et al. 2022, LST: Ladder Side-Tuning for Parameter and Memory Efficient Transfer Learning (arXiv:2206.06522)"},
      // Partial
      {"bitfit", "partial", "Ben Zaken et al. 2022, BitFit: Simple Parameter-efficient Fine-tuning (arXiv:2106.10199)"},
      {"ln-tuning", "partial", "Qi et al. 2022, Parameter-Efficient Tuning on Layer Normalization (arXiv:2211.08682)"},
      {"layer-freeze", "partial", "Lee et al. 2019, What Would Elsa Do? Freezing Layers During Transformer Fine-Tuning (arXiv:1911.03090)"},
      {"sparse-delta", "partial", "Ansell et al. 2022, Composable Sparse Fine-Tuning for Cross-Lingual Transfer (arXiv:2110.07560)"},
      {"fish-mask", "partial", "Sung et al. 2021, Training Neural Networks with Fixed Sparse Masks (arXiv:2111.09839)"},
      {"child-tuning-d", "partial", "Xu et al. 2021, Raise a Child in Large Language Model (arXiv:2109.05687)"},
      {"child-tuning-f", "partial", "Xu et al. 2021, Raise a Child in Large Language Model (arXiv:2109.05687)"},
      {"diff-pruning", "partial", "Guo et al. 2021, Parameter-Efficient Transfer Learning with Diff Pruning (arXiv:2012.07463)"},
      {"lt-sft", "partial", "Ansell et al. 2022, Composable Sparse Fine-Tuning for Cross-Lingual Transfer (arXiv:2110.07560)"},
      // Hybrid
      {"mam", "hybrid", "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning (arXiv:2110.04366)"},
      {"s4", "hybrid", "Chen et al. 2023, Parameter-Efficient Fine-Tuning Design Spaces (arXiv:2301.01821)"},
      {"unipelt", "hybrid", "Mao et al. 2022, UniPELT: A Unified Framework for Parameter-Efficient Language Model Tuning (arXiv:2110.07577)"},
      // Unified
      {"composite", "unified", "He et al. 2022, Towards a Unified View of Parameter-Efficient Transfer Learning (arXiv:2110.04366)"},
      {"propetl", "unified", "Zeng et al. 2023, One Network, Many Masks: Towards More Parameter-Efficient Transfer Learning (arXiv:2305.17682)"},
      {"adamix", "unified", "Wang et al. 2022, AdaMix: Mixture-of-Adaptations for Parameter-efficient Model Tuning (arXiv:2205.12410)"},
  };
  return c;
}

}  // namespace

std::vector<MethodCard> method_cards() { return cards(); }

const MethodCard* method_card(const std::string& name) {
  auto& c = cards();
  auto it = std::find_if(c.begin(), c.end(), [&](const MethodCard& m) { return m.name == name; });
  return it == c.end() ? nullptr : &*it;
}

}  // namespace peft
