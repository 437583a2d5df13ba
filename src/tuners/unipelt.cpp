// UniPELT (Mao et al. 2022, "UniPELT: A Unified Framework for Parameter-Efficient Language Model
// Tuning", sec. 3.2, fig. 1): a bottleneck adapter, prefix tuning and LoRA in every layer, each
// submodule behind a learned gate that can turn it up or down per token:
//   LoRA    h = W0 x + G_L · s B A x,           G_L = sigmoid(W_GL x + b)   (q_proj, v_proj; r = 8)
//   adapter h = h_F + G_A · W_up f(W_down h_F),  G_A = sigmoid(W_GA h_F + b) (after the FFN, Pfeiffer)
//   prefix  P_k, P_v scaled by G_P = sigmoid(W_GP x + b)                     (l = 10 virtual tokens)
// A COMPOSITE preset (src/tuners/composite.cpp) of gated LoRA (lora_gate), a gated sequential
// adapter (adapter_gate) and gated prefix tuning (prefix_gate, src/tuners/prompt.cpp). The
// authors' code gates BERT's prefix by the mean of G_P over the sequence; our gate averages over
// the tokens each query attends (PrefixGate, include/peft/model.h): the same on encoders, and in
// a causal LM no later token reaches a query through the gate. Not an identity at init: the
// prefix is random (as in the paper); the LoRA (B = 0) and adapter (W_up = 0) parts start at zero.
// On encoder-decoders the prefix uses prefix tuning's "paper" layout (every attention site gated).
#include "peft/tuner.h"

namespace peft {
namespace {

PEFT_REGISTER_METHOD("unipelt", {{"peft_type", "COMPOSITE"},
                                 {"components",
                                  {{{"peft_type", "LORA"}, {"r", 8}, {"lora_alpha", 16}, {"lora_gate", true}},
                                   {{"peft_type", "BOTTLENECK"}, {"adapter_type", "pfeiffer"}, {"adapter_gate", true}},
                                   {{"peft_type", "PREFIX_TUNING"},
                                    {"num_virtual_tokens", 10},
                                    {"prefix_gate", true},
                                    {"prefix_layout", "paper"}}}}});

}  // namespace
}  // namespace peft
