// Mixed-adapter batch vs one merged adapter (see bench_multi.h).
#include "cli/bench_multi.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <iomanip>
#include <sstream>

#include "peft/generate.h"
#include "peft/tuner.h"

namespace peft::cli {
namespace {

double seconds_of(const std::function<void()>& fn) {
  auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string fmt(double v, int prec) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << v;
  return os.str();
}

}  // namespace

nlohmann::json multi_suite(const BenchShape& shape, int64_t adapters, int64_t decode_tokens, int64_t repeats,
                           std::ostream& os) {
  torch::manual_seed(0);
  auto model = create_model(shape.config());
  model->eval();
  auto pm = std::make_shared<PeftModel>(model);
  std::vector<std::string> names;
  for (int64_t i = 0; i < adapters; ++i) {  // random B too, so that every adapter changes the output
    names.push_back("a" + std::to_string(i));
    pm->add_adapter(names.back(), method_config("lora", {{"r", 8}, {"init_lora_weights", false}}));
  }
  pm->eval();
  torch::NoGradGuard ng;
  const int64_t B = adapters, T = shape.seq;
  auto ids = torch::randint(3, shape.vocab, {B, T}, torch::kLong);
  std::vector<std::vector<int64_t>> prompts;
  for (int64_t i = 0; i < B; ++i) {
    auto r = ids[i].slice(0, 0, std::max<int64_t>(1, T / 4)).contiguous();
    prompts.emplace_back(r.data_ptr<int64_t>(), r.data_ptr<int64_t>() + r.numel());
  }
  SamplingOptions so;
  so.max_new_tokens = decode_tokens;
  auto gen = at::detail::createCPUGenerator(0);
  ModelInput in;
  in.input_ids = ids;
  auto mixed = [&](const ModelInput& mi) { return pm->forward(mi, names); };
  auto merged = [&](const ModelInput& mi) { return pm->forward(mi); };
  std::vector<double> fm, fb, gm, gb, fr, gr;
  for (int64_t r = 0; r < repeats + 1; ++r) {  // round 0 warms up
    pm->set_adapter(names[0]);
    double f_mixed = seconds_of([&] { mixed(in); });
    double g_mixed = seconds_of([&] { generate_causal(mixed, prompts, so, gen); });
    pm->merge();  // the same batch on one merged adapter: the base's cost
    double f_merged = seconds_of([&] { merged(in); });
    double g_merged = seconds_of([&] { generate_causal(merged, prompts, so, gen); });
    pm->unmerge();
    if (r == 0) continue;
    fm.push_back(B * T / f_mixed);
    fb.push_back(B * T / f_merged);
    gm.push_back(B * decode_tokens / g_mixed);
    gb.push_back(B * decode_tokens / g_merged);
    fr.push_back(fm.back() / fb.back());
    gr.push_back(gm.back() / gb.back());
  }
  os << "\n## " << adapters << " LoRA adapters (r 8 on q, v) in one mixed batch vs one merged adapter (batch "
     << B << ", prompt " << T << " tokens for the forward, " << prompts[0].size() << " + " << decode_tokens
     << " greedy tokens for decoding)\n\n";
  os << "| pass | mixed tokens/s | merged tokens/s | mixed / merged |\n|---|---:|---:|---:|\n";
  os << "| forward | " << fmt(median_of(fm), 0) << " | " << fmt(median_of(fb), 0) << " | " << fmt(median_of(fr), 2)
     << " |\n";
  os << "| greedy decoding | " << fmt(median_of(gm), 0) << " | " << fmt(median_of(gb), 0) << " | "
     << fmt(median_of(gr), 2) << " |\n";
  os << "\nmedians of " << repeats << " rounds (per-round ratios); target >= 0.8\n";
  return {{"adapters", adapters},          {"batch", B},
          {"seq", T},                      {"decode_tokens", decode_tokens},
          {"forward_tokens_per_s_mixed", median_of(fm)}, {"forward_tokens_per_s_merged", median_of(fb)},
          {"decode_tokens_per_s_mixed", median_of(gm)},  {"decode_tokens_per_s_merged", median_of(gb)},
          {"forward_ratio", median_of(fr)}, {"decode_ratio", median_of(gr)}};
}

}  // namespace peft::cli
