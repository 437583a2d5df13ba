// Batched generation with an encoder-decoder model (T5) for the CLI's BLEU/chrF evaluation:
// sources as token ids in, detokenized hypotheses out (generate_seq2seq: greedy or beam search).
#pragma once
#include <string>
#include <vector>

#include "peft/generate.h"
#include "peft/model.h"
#include "peft/tokenizer.h"

namespace peft::cli {

/// Source ids as the training data has them: tokenizer specials, EOS appended when missing,
/// truncated to max_length (keeping the EOS).
std::vector<int64_t> encode_source(const Tokenizer& tok, const std::string& text, int64_t max_length);

/// Generates for every source (right-padded batches of batch_size) and decodes each output
/// without specials. The model's own pad/EOS/start ids apply unless `opts` sets them.
/// `forward`: the adapters' forward (PeftModel), so that input tuners take part.
std::vector<std::string> generate_texts(PretrainedModel& model, const Tokenizer& tok,
                                        const std::vector<std::vector<int64_t>>& sources, const GenerateOptions& opts,
                                        int64_t batch_size, const ForwardFn& forward = {});

}  // namespace peft::cli
