// Greedy decoding and beam search for encoder-decoders (see include/peft/generate.h).
#include "peft/generate.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "peft/error.h"

namespace peft {
namespace {

int64_t config_id(const nlohmann::json& c, const std::string& key, int64_t dflt) {
  if (!c.contains(key) || c[key].is_null()) return dflt;
  if (c[key].is_array()) return c[key].empty() ? dflt : c[key][0].get<int64_t>();  // several EOS: the first
  return cfg_int(c, key);
}

struct Hypothesis {
  double score;
  torch::Tensor tokens;  // [len] including the start token, without the closing EOS
};

// One batch row's finished hypotheses (transformers' BeamHypotheses).
struct Hypotheses {
  std::vector<Hypothesis> beams;
  double worst = 1e9;
  bool done = false;

  void add(torch::Tensor tokens, double sum_logprobs, int64_t generated_len, int64_t num_beams, double lp) {
    double score = sum_logprobs / std::pow(static_cast<double>(generated_len), lp);
    if ((int64_t)beams.size() >= num_beams && score <= worst) return;
    beams.push_back({score, std::move(tokens)});
    if ((int64_t)beams.size() > num_beams) {
      std::vector<size_t> order(beams.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return beams[a].score < beams[b].score; });
      worst = beams[order[1]].score;
      beams.erase(beams.begin() + order[0]);
    } else {
      worst = std::min(score, worst);
    }
  }
  // best_sum: the best candidate's sum of log-probs this step; generated_len: its length.
  bool is_done(double best_sum, int64_t generated_len, int64_t num_beams, double lp, bool early) const {
    if ((int64_t)beams.size() < num_beams) return false;
    if (early) return true;
    return worst >= best_sum / std::pow(static_cast<double>(generated_len), lp);
  }
  const Hypothesis& best() const {
    size_t b = 0;
    for (size_t i = 1; i < beams.size(); ++i)
      if (beams[i].score >= beams[b].score) b = i;  // ties: the later one, as transformers' sorted().pop()
    return beams[b];
  }
};

void reorder_cache(KVCache& cache, const torch::Tensor& idx) {
  for (auto* vec : {&cache.k, &cache.v, &cache.cross_k, &cache.cross_v, &cache.gate_scores, &cache.cross_gate_scores})
    for (auto& t : *vec)
      if (t.defined()) t = t.index_select(0, idx.to(t.device()));
}

}  // namespace

namespace {
// Validated ids and the encoder output, expanded to `rows_per_input` rows per input row.
struct Seq2SeqRun {
  PretrainedModel& model;
  ForwardFn fwd;
  int64_t eos, pad, start, B;
  torch::Tensor enc, mask;
  torch::Device dev;
  KVCache cache;

  Seq2SeqRun(PretrainedModel& m, const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
             const GenerateOptions& opts, int64_t rows_per_input, const ForwardFn& forward)
      : model(m), fwd(forward), dev(input_ids.device()) {
    if (!fwd) fwd = [this](const ModelInput& in) { return model.forward(in); };
    PEFT_CHECK(model.is_encoder_decoder(), "generate: ", model.model_type(), " is not an encoder-decoder model");
    PEFT_CHECK(opts.num_beams >= 1, "generate: num_beams must be >= 1, got ", opts.num_beams);
    PEFT_CHECK(opts.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", opts.max_new_tokens);
    PEFT_CHECK(input_ids.defined() && input_ids.dim() == 2, "generate: input_ids must be [batch, seq]");
    eos = opts.eos_token_id >= 0 ? opts.eos_token_id : config_id(model.config, "eos_token_id", -1);
    pad = opts.pad_token_id >= 0 ? opts.pad_token_id : config_id(model.config, "pad_token_id", 0);
    start = opts.decoder_start_token_id >= 0 ? opts.decoder_start_token_id
                                             : config_id(model.config, "decoder_start_token_id", pad);
    B = input_ids.size(0);
    // Encoder once (the decoder's first step is recomputed with the cache).
    ModelInput enc_in;
    enc_in.input_ids = input_ids;
    enc_in.attention_mask = attention_mask;
    enc_in.decoder_input_ids = torch::full({B, 1}, start, torch::TensorOptions().dtype(torch::kLong).device(dev));
    enc = fwd(enc_in).encoder_last_hidden_state;
    PEFT_CHECK(enc.defined(), "generate: the model returned no encoder_last_hidden_state");
    mask = attention_mask;
    if (rows_per_input > 1) {
      enc = enc.repeat_interleave(rows_per_input, 0);
      if (mask.defined()) mask = mask.repeat_interleave(rows_per_input, 0);
    }
  }
  // Log-probs [rows, V] (float32, CPU) of the token after `last` [rows, 1].
  torch::Tensor step(const torch::Tensor& last) {
    ModelInput mi;
    mi.encoder_hidden_states = enc;
    mi.attention_mask = mask;
    mi.decoder_input_ids = last.to(dev);
    mi.cache = &cache;
    auto logits = fwd(mi).logits;
    return torch::log_softmax(logits.select(1, logits.size(1) - 1).to(torch::kFloat32), -1).cpu();
  }
};
}  // namespace

GenerateResult generate_seq2seq(PretrainedModel& model, const torch::Tensor& input_ids,
                                const torch::Tensor& attention_mask, const GenerateOptions& opts,
                                const ForwardFn& forward) {
  if (opts.num_beams > 1) return beam_search_seq2seq(model, input_ids, attention_mask, opts, forward);
  torch::NoGradGuard ng;
  Seq2SeqRun run(model, input_ids, attention_mask, opts, 1, forward);
  const int64_t B = run.B, eos = run.eos, pad = run.pad;
  auto seq = torch::full({B, 1}, run.start, torch::kLong);
  auto unfinished = torch::ones({B}, torch::kBool);
  auto scores = torch::zeros({B}, torch::kFloat32);
  for (int64_t t = 0; t < opts.max_new_tokens; ++t) {
    auto logp = run.step(seq.slice(1, seq.size(1) - 1));
    auto next = logp.argmax(-1);
    if (eos >= 0) next = torch::where(unfinished, next, torch::full_like(next, pad));
    scores += torch::where(unfinished, logp.gather(1, next.unsqueeze(1)).squeeze(1), torch::zeros_like(scores));
    seq = torch::cat({seq, next.unsqueeze(1)}, 1);
    if (eos >= 0) unfinished = unfinished & next.ne(eos);
    if (!unfinished.any().item<bool>()) break;
  }
  GenerateResult r;
  r.sequences = seq.to(input_ids.device());
  r.scores = scores;
  return r;
}

GenerateResult beam_search_seq2seq(PretrainedModel& model, const torch::Tensor& input_ids,
                                   const torch::Tensor& attention_mask, const GenerateOptions& opts,
                                   const ForwardFn& forward) {
  torch::NoGradGuard ng;
  Seq2SeqRun run(model, input_ids, attention_mask, opts, std::max<int64_t>(opts.num_beams, 1), forward);
  const int64_t B = run.B, nb = opts.num_beams, prompt_len = 1, eos = run.eos, pad = run.pad;
  const double lp = opts.length_penalty;
  KVCache& cache = run.cache;
  GenerateResult r;
  // Beam search over B * nb rows (row b * nb + j is beam j of batch row b).
  const int64_t max_length = prompt_len + opts.max_new_tokens;
  auto beam_scores = torch::zeros({B, nb}, torch::kFloat32);
  beam_scores.slice(1, 1).fill_(-1e9);  // all beams start identical: only beam 0 may expand at first
  beam_scores = beam_scores.view({-1});
  auto seqs = torch::full({B * nb, 1}, run.start, torch::kLong);
  std::vector<Hypotheses> hyps(B);
  for (int64_t t = 0; t < opts.max_new_tokens; ++t) {
    auto logp = run.step(seqs.slice(1, seqs.size(1) - 1));
    const int64_t V = logp.size(-1);
    PEFT_CHECK(V >= 2, "generate: beam search needs a vocabulary of at least 2 tokens");
    auto cand = (logp + beam_scores.unsqueeze(1)).view({B, nb * V});
    auto top = cand.topk(2 * nb, 1, /*largest=*/true, /*sorted=*/true);
    auto top_s = std::get<0>(top), top_i = std::get<1>(top);
    auto acc_s = top_s.accessor<float, 2>();
    auto acc_i = top_i.accessor<int64_t, 2>();
    auto next_scores = torch::zeros({B, nb}, torch::kFloat32);
    auto next_tokens = torch::full({B, nb}, pad, torch::kLong);
    auto next_idx = torch::zeros({B, nb}, torch::kLong);
    const int64_t cur_len = seqs.size(1) + 1;  // length of the sequences these scores extend to
    for (int64_t b = 0; b < B; ++b) {
      if (hyps[b].done) {
        for (int64_t j = 0; j < nb; ++j) next_idx[b][j] = b * nb;  // finished rows: padding
        continue;
      }
      int64_t filled = 0;
      for (int64_t rank = 0; rank < 2 * nb && filled < nb; ++rank) {
        int64_t tok = acc_i[b][rank] % V, beam = acc_i[b][rank] / V, g = b * nb + beam;
        double s = acc_s[b][rank];
        if (eos >= 0 && tok == eos) {
          if (rank >= nb) continue;  // an EOS outside the top num_beams does not close a hypothesis
          hyps[b].add(seqs[g].clone(), s, cur_len - prompt_len, nb, lp);
        } else {
          next_scores[b][filled] = s;
          next_tokens[b][filled] = tok;
          next_idx[b][filled] = g;
          ++filled;
        }
      }
      TORCH_INTERNAL_ASSERT(filled == nb, "beam search: fewer continuations than beams");
      hyps[b].done = hyps[b].is_done(acc_s[b][0], cur_len - prompt_len, nb, lp, opts.early_stopping);
    }
    beam_scores = next_scores.view({-1});
    auto idx = next_idx.view({-1});
    seqs = torch::cat({seqs.index_select(0, idx), next_tokens.view({-1, 1})}, 1);
    reorder_cache(cache, idx);
    bool all_done = std::all_of(hyps.begin(), hyps.end(), [](const Hypotheses& h) { return h.done; });
    if (all_done) break;
  }
  // Rows still open at max length: their beams become hypotheses as they are.
  auto acc_b = beam_scores.accessor<float, 1>();
  for (int64_t b = 0; b < B; ++b) {
    if (hyps[b].done) continue;
    for (int64_t j = 0; j < nb; ++j)
      hyps[b].add(seqs[b * nb + j].clone(), acc_b[b * nb + j], seqs.size(1) - prompt_len, nb, lp);
  }
  std::vector<const Hypothesis*> best(B);
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    best[b] = &hyps[b].best();
    longest = std::max(longest, best[b]->tokens.size(0));
  }
  const int64_t width = std::min(longest + (eos >= 0 ? 1 : 0), max_length);
  r.sequences = torch::full({B, std::max(width, longest)}, pad, torch::kLong);
  r.scores = torch::zeros({B}, torch::kFloat32);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = best[b]->tokens.size(0);
    r.sequences[b].slice(0, 0, n).copy_(best[b]->tokens);
    if (eos >= 0 && n < r.sequences.size(1)) r.sequences[b][n] = eos;
    r.scores[b] = best[b]->score;
  }
  r.sequences = r.sequences.to(input_ids.device());
  return r;
}

}  // namespace peft
