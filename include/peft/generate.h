// Generation for encoder-decoder models (T5): greedy decoding and beam search with the
// semantics of transformers' generate(num_beams=..., length_penalty=..., early_stopping=...).
//
//   peft::GenerateOptions o;  o.max_new_tokens = 32;  o.num_beams = 4;
//   auto r = peft::generate_seq2seq(*model, input_ids, attention_mask, o);
//   // r.sequences [B, 1 + n]: decoder_start_token_id, generated ids, EOS, then pad.
//
// Beam search (transformers' BeamSearchScorer): each step keeps the num_beams best of the
// 2 * num_beams top continuations; a top-num_beams candidate that is EOS closes a hypothesis
// scored sum_logprobs / generated_len ** length_penalty (generated_len counts the EOS).
// A batch row is done when num_beams hypotheses are closed and (early_stopping) or no open beam
// can beat the worst of them (best open sum_logprobs / cur_len ** length_penalty).
#pragma once
#include <torch/types.h>

#include <functional>

#include "peft/model.h"

namespace peft {

struct GenerateOptions {
  int64_t max_new_tokens = 20;
  int64_t num_beams = 1;        // 1: greedy
  double length_penalty = 1.0;  // > 0 favours longer sequences, < 0 shorter ones (beam search only)
  bool early_stopping = false;  // beam search: stop a row once num_beams hypotheses are finished
  // -1: from model.config (eos_token_id, pad_token_id, decoder_start_token_id, pad as fallback).
  int64_t eos_token_id = -1, pad_token_id = -1, decoder_start_token_id = -1;
};

struct GenerateResult {
  torch::Tensor sequences;  // [B, L] int64, starting with decoder_start_token_id, right-padded with pad
  torch::Tensor scores;     // [B] float: greedy: sum of log-probs of the generated tokens;
                            // beam search: the best hypothesis' length-penalised score
};

/// The forward pass generation calls: the model's own, or one that wraps it (a PeftModel's, so
/// that prompt and prefix tuning take part).
using ForwardFn = std::function<ModelOutput(const ModelInput&)>;

/// Runs the encoder once, then decodes with the KV cache. `attention_mask` may be undefined.
/// `forward` defaults to model.forward. Errors (peft::Error) when the model is not an
/// encoder-decoder or options are invalid.
GenerateResult generate_seq2seq(PretrainedModel& model, const torch::Tensor& input_ids,
                                const torch::Tensor& attention_mask, const GenerateOptions& opts = {},
                                const ForwardFn& forward = {});
/// Beam search whatever num_beams (>= 1; generate_seq2seq uses it for num_beams > 1). With one
/// beam it returns greedy's sequences (scores length-penalised).
GenerateResult beam_search_seq2seq(PretrainedModel& model, const torch::Tensor& input_ids,
                                   const torch::Tensor& attention_mask, const GenerateOptions& opts,
                                   const ForwardFn& forward = {});

/// Decoding options of decoder-only generation (generate_causal).
struct SamplingOptions {
  int64_t max_new_tokens = 20;
  double temperature = 0;  // <= 0: greedy (argmax)
  int64_t top_k = 0;       // 0: off
  double top_p = 1.0;      // nucleus sampling (Holtzman et al. 2020); 1: off
  int64_t eos_token_id = -1;  // -1: never stops early
};

/// The next token from one row's logits [V]: argmax at temperature <= 0, else a draw from the
/// softmax of logits / temperature restricted to the top_k and the top_p nucleus.
int64_t sample_token(torch::Tensor logits, const SamplingOptions& o, torch::Generator& gen);

struct CausalGeneration {
  std::vector<std::vector<int64_t>> tokens;  // per row: the generated ids, without the prompt (EOS excluded)
  torch::Tensor scores;                       // [steps, B, V] float32 logits of each step
};

/// Decoder-only generation of a batch of prompts with the KV cache, as transformers' generate():
/// prompts of different lengths are left-padded (attention_mask 0, position_ids = running count
/// of real tokens); a row stops at EOS, the rest continue. `forward` is the model's, a
/// PeftModel's, or a mixed-adapter forward (PeftModel::forward(in, row_adapters)). Rows draw from
/// `gen` in row order at each step.
CausalGeneration generate_causal(const ForwardFn& forward, const std::vector<std::vector<int64_t>>& prompts,
                                 const SamplingOptions& opts, torch::Generator& gen);

}  // namespace peft
