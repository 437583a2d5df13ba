#include "cli/seq2seq_gen.h"

#include <torch/torch.h>

#include "peft/error.h"

namespace peft::cli {

std::vector<int64_t> encode_source(const Tokenizer& tok, const std::string& text, int64_t max_length) {
  auto ids = tok.encode(text, true);
  if (tok.eos_id >= 0 && (ids.empty() || ids.back() != tok.eos_id)) ids.push_back(tok.eos_id);
  if (max_length > 0 && static_cast<int64_t>(ids.size()) > max_length) {
    int64_t last = ids.back();
    ids.resize(static_cast<size_t>(max_length));
    if (last == tok.eos_id) ids.back() = last;
  }
  return ids;
}

std::vector<std::string> generate_texts(PretrainedModel& model, const Tokenizer& tok,
                                        const std::vector<std::vector<int64_t>>& sources, const GenerateOptions& opts,
                                        int64_t batch_size, const ForwardFn& forward) {
  PEFT_CHECK(model.is_encoder_decoder(), "generation from sources needs an encoder-decoder model (got ",
             model.model_type(), ")");
  PEFT_CHECK(batch_size > 0, "generation batch size must be > 0");
  torch::NoGradGuard ng;
  const int64_t pad = opts.pad_token_id >= 0 ? opts.pad_token_id : cfg_int(model.config, "pad_token_id", 0);
  const int64_t eos = opts.eos_token_id >= 0 ? opts.eos_token_id : cfg_int(model.config, "eos_token_id", tok.eos_id);
  std::vector<std::string> out;
  for (size_t s = 0; s < sources.size(); s += static_cast<size_t>(batch_size)) {
    size_t e = std::min(sources.size(), s + static_cast<size_t>(batch_size));
    int64_t B = static_cast<int64_t>(e - s), T = 1;
    for (size_t i = s; i < e; ++i) T = std::max<int64_t>(T, static_cast<int64_t>(sources[i].size()));
    auto ids = torch::full({B, T}, pad, torch::kLong), mask = torch::zeros({B, T}, torch::kLong);
    for (size_t i = s; i < e; ++i) {
      auto n = static_cast<int64_t>(sources[i].size());
      if (n == 0) continue;
      ids[static_cast<int64_t>(i - s)].slice(0, 0, n).copy_(torch::tensor(sources[i], torch::kLong));
      mask[static_cast<int64_t>(i - s)].slice(0, 0, n).fill_(1);
    }
    auto r = generate_seq2seq(model, ids, mask, opts, forward);
    auto seq = r.sequences.contiguous();
    for (int64_t b = 0; b < B; ++b) {
      std::vector<int64_t> toks;
      for (int64_t j = 1; j < seq.size(1); ++j) {  // position 0 is the decoder start token
        int64_t t = seq[b][j].item<int64_t>();
        if (t == eos) break;
        toks.push_back(t);
      }
      // Trailing padding after an early stop is dropped as a special token by decode.
      while (!toks.empty() && toks.back() == pad) toks.pop_back();
      out.push_back(tok.decode(toks, /*skip_special=*/true));
    }
  }
  return out;
}

}  // namespace peft::cli
