#include "cli/bench_step.h"

#include "models/quant_linear.h"
#include "models/skip_init.h"

#include <fstream>
#include <sstream>

#include "peft/error.h"

namespace peft::cli {

BenchShape BenchShape::small() {
  BenchShape s;
  s.hidden = 64;
  s.layers = 2;
  s.heads = 4;
  s.intermediate = 172;
  s.vocab = 512;
  s.batch = 2;
  s.seq = 32;
  return s;
}

BenchShape BenchShape::medium() {
  BenchShape s;
  s.hidden = 512;
  s.layers = 8;
  s.heads = 8;
  s.intermediate = 1408;
  return s;
}

BenchShape BenchShape::llama3_8b() {
  BenchShape s;
  s.hidden = 4096;
  s.layers = 32;
  s.heads = 32;
  s.kv_heads = 8;
  s.intermediate = 14336;
  s.vocab = 128256;
  s.rope_theta = 500000.0;
  s.batch = 1;
  s.seq = 256;
  return s;
}

int64_t BenchShape::parameters() const {
  const int64_t kv = (kv_heads > 0 ? kv_heads : heads) * (hidden / heads);  // k/v projection width
  return 2 * vocab * hidden + layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * intermediate + 2 * hidden) +
         hidden;
}

nlohmann::json BenchShape::config() const {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", hidden},
          {"num_hidden_layers", layers},
          {"num_attention_heads", heads},
          {"num_key_value_heads", kv_heads > 0 ? kv_heads : heads},
          {"intermediate_size", intermediate},
          {"vocab_size", vocab},
          {"max_position_embeddings", std::max<int64_t>(2048, seq)},
          {"rms_norm_eps", 1e-6},
          {"rope_theta", rope_theta},
          {"hidden_act", "silu"},
          {"tie_word_embeddings", false}};
}

nlohmann::json bench_method_config(const std::string& method, int64_t total_steps) {
  if (method == "full") return nullptr;
  // Each method at its defaults (LoRA r 8, AdaLoRA's budget 12 -> 8, as Python peft's), with
  // what depends on the run (AdaLoRA's total_step) filled in as `peft train` does.
  nlohmann::json cfg = method_config(method);
  TrainingSetup setup;
  setup.total_steps = total_steps;
  find_tuner(cfg["peft_type"].get<std::string>())->prepare_training_config(cfg, setup);
  return cfg;
}

StepBench::StepBench(const BenchShape& shape, const std::string& method, int64_t total_steps, torch::Dtype dtype,
                     const quant::QuantConfig* quant, const nlohmann::json& adapter_overrides) {
  torch::manual_seed(0);
  check_compute_dtype(dtype, torch::kCPU, "bench --dtype");
  PEFT_CHECK(adapter_overrides.is_null() || adapter_overrides.is_object(),
             "bench: the adapter overrides must be a JSON object, got ", adapter_overrides.dump());
  LoadOptions lo;
  lo.dtype = dtype;
  if (quant) {
    PEFT_CHECK(method != "full", "bench: full fine-tuning cannot train a quantized base");
    check_compute_dtype(quant->compute_dtype, torch::kCPU, "bench --compute_dtype");
    {
      SkipLinearInit skip;  // Linear weights allocated, not written: not resident
      model_ = create_model(shape.config(), lo);
    }
    // Each weight gets the init the construction skipped right before it is quantized.
    auto rep = quantize_model(*model_, *quant, init_linear_weight);
    quantized_layers = rep.layers;
    quant_bits_per_param = rep.bits_per_param();
    quant_bits_per_param_blocks = rep.bits_per_param_blocks();
    for (auto& m : model_->modules())  // the layers kept in float (the head)
      if (auto* l = dynamic_cast<Linear*>(m.get()); l && !as_quantized(l)) init_linear_weight(*l);
    if (is_half_dtype(quant->compute_dtype)) matmul_dtype_ = std::make_unique<MatmulDtypeGuard>(quant->compute_dtype);
  } else {
    model_ = create_model(shape.config(), lo);
  }
  if (!quant && is_half_dtype(dtype)) {
    matmul_dtype_ = std::make_unique<MatmulDtypeGuard>(dtype);
  }
  std::vector<std::pair<std::string, torch::Tensor>> named;
  if (method == "full") {
    for (auto& p : model_->named_parameters()) {
      p.value().set_requires_grad(true);
      named.emplace_back(p.key(), p.value());
      trainable += p.value().numel();
    }
    total = trainable;
    promote_trainable_to_float32(*model_);  // float32 master weights, bfloat16 products
  } else {
    pm_ = std::make_shared<PeftModel>(model_);
    adapter_config = bench_method_config(method, total_steps);
    if (adapter_overrides.is_object()) adapter_config.update(adapter_overrides);
    pm_->add_adapter("default", adapter_config);
    adapter_config = pm_->adapter("default").config;
    targeted_modules = static_cast<int64_t>(pm_->adapter("default").targeted.size());
    named = pm_->named_trainable_parameters();
    auto r = pm_->trainable_report();
    trainable = r.trainable;
    total = r.total;
    pm_->train();
  }
  model_->train();
  for (auto& [n, p] : named) params_.push_back(p);
  PEFT_CHECK(!params_.empty(), "bench: method '", method, "' has no trainable parameters on this model");
  opt_ = std::make_unique<torch::optim::AdamW>(params_, torch::optim::AdamWOptions(1e-4).weight_decay(0.01));
  in_.input_ids = torch::randint(shape.vocab, {shape.batch, shape.seq}, torch::kLong);
  in_.labels = in_.input_ids;
  if (pm_ && pm_->needs_calibration()) {  // FISH / Child-Tuning_D choose their entries from data
    pm_->calibrate([this] { return pm_->forward(in_).loss; });
    trainable = pm_->trainable_report().trainable;
  }
}

double StepBench::step() {
  ModelOutput out = pm_ ? pm_->forward(in_) : model_->forward(in_);
  if (before_backward) before_backward();
  out.loss.backward();
  if (before_update) before_update();
  if (pm_) pm_->before_step(step_);
  opt_->step();
  if (pm_) pm_->after_step(step_);
  opt_->zero_grad();
  ++step_;
  return out.loss.item<double>();
}

Rss read_rss() {
  Rss r;
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream is(line);
    std::string key;
    int64_t v = 0;
    is >> key >> v;
    if (key == "VmRSS:") r.rss_kib = v;
    if (key == "VmHWM:") r.hwm_kib = v;
  }
  return r;
}

bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

}  // namespace peft::cli
