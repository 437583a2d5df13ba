// Model registry, loading and saving shared by every family.
#include "peft/model.h"

#include <torch/torch.h>

#include <filesystem>

#include "io/llama2c.h"
#include "io/memory_budget.h"
#include "models/load_hook.h"
#include "models/quant_linear.h"
#include "peft/error.h"

namespace peft {

namespace {
// Sets LibTorch's default floating dtype for the guard's lifetime (torch.set_default_dtype).
struct DefaultDtypeGuard {
  caffe2::TypeMeta prev;
  explicit DefaultDtypeGuard(torch::Dtype d) : prev(c10::get_default_dtype()) {
    c10::set_default_dtype(caffe2::TypeMeta::fromScalarType(d));
  }
  ~DefaultDtypeGuard() { c10::set_default_dtype(prev); }
};
}  // namespace

std::string task_type_name(TaskType t) {
  switch (t) {
    case TaskType::CausalLM: return "CAUSAL_LM";
    case TaskType::SeqCls: return "SEQ_CLS";
    case TaskType::Seq2SeqLM: return "SEQ_2_SEQ_LM";
    case TaskType::FeatureExtraction: return "FEATURE_EXTRACTION";
  }
  return "?";
}

TaskType task_type_from_name(const std::string& s) {
  if (s == "CAUSAL_LM") return TaskType::CausalLM;
  if (s == "SEQ_CLS") return TaskType::SeqCls;
  if (s == "SEQ_2_SEQ_LM") return TaskType::Seq2SeqLM;
  if (s == "FEATURE_EXTRACTION") return TaskType::FeatureExtraction;
  fail("unknown task_type '", s, "' (CAUSAL_LM, SEQ_CLS, SEQ_2_SEQ_LM, FEATURE_EXTRACTION)");
}

namespace {
struct Entry {
  std::string model_type;
  TaskType task;
  ModelFactory factory;
};
std::map<std::string, Entry>& registry() {
  static std::map<std::string, Entry> r;
  return r;
}
}  // namespace

bool register_model(const std::string& arch, const std::string& model_type, TaskType task, ModelFactory f) {
  TORCH_INTERNAL_ASSERT(!registry().count(arch), "duplicate model architecture ", arch);
  registry()[arch] = {model_type, task, std::move(f)};
  return true;
}

std::vector<std::string> registered_architectures() {
  std::vector<std::string> out;
  for (auto& kv : registry()) out.push_back(kv.first);
  return out;
}

ModelPtr create_model(const nlohmann::json& config, const LoadOptions& opts) {
  PEFT_CHECK(config.is_object(), "config.json: not a JSON object");
  std::string model_type = cfg_str(config, "model_type", "");
  std::string arch;
  if (config.contains("architectures") && config["architectures"].is_array() && !config["architectures"].empty() &&
      config["architectures"][0].is_string())
    arch = config["architectures"][0].get<std::string>();
  const Entry* chosen = nullptr;
  std::string chosen_arch;
  auto it = registry().find(arch);
  if (it != registry().end() && (!opts.task || it->second.task == *opts.task)) {
    chosen = &it->second;
    chosen_arch = arch;
  }
  if (!chosen) {
    PEFT_CHECK(!model_type.empty() || !arch.empty(), "config.json: neither 'architectures' nor 'model_type' is set");
    TaskType want = opts.task ? *opts.task : (it != registry().end() ? it->second.task : TaskType::CausalLM);
    for (auto& [name, e] : registry())
      if (e.model_type == model_type && e.task == want) {
        chosen = &e;
        chosen_arch = name;
      }
    if (!chosen && !opts.task)
      for (auto& [name, e] : registry())
        if (e.model_type == model_type) { chosen = &e; break; }
  }
  if (!chosen) {
    std::string known;
    for (auto& kv : registry()) known += " " + kv.first;
    fail("config.json: unsupported model (architectures '", arch, "', model_type '", model_type,
         "'", opts.task ? ", task " + task_type_name(*opts.task) : std::string(), "); supported:", known);
  }
  nlohmann::json cfg = config;
  // A task override (a classifier on a bare / causal-LM checkpoint) is recorded, so a merged
  // checkpoint written by save_pretrained reloads with its head.
  if (opts.task && !chosen_arch.empty() && chosen_arch != arch) cfg["architectures"] = {chosen_arch};
  if (opts.num_labels > 0) {
    nlohmann::json id2label = nlohmann::json::object();
    for (int64_t i = 0; i < opts.num_labels; ++i) id2label[std::to_string(i)] = "LABEL_" + std::to_string(i);
    cfg["id2label"] = id2label;
  }
  // Built directly in the target dtype (parameters and buffers allocated as `opts.dtype`), so a
  // half-precision model never holds a float32 copy of itself; tensors a family creates with an
  // explicit dtype (rotary frequencies in float32) keep it.
  ModelPtr m;
  {
    std::optional<DefaultDtypeGuard> dg;
    if (opts.dtype == torch::kBFloat16 || opts.dtype == torch::kFloat16) dg.emplace(opts.dtype);
    m = chosen->factory(cfg);
  }
  m->config = cfg;
  if (opts.dtype != torch::kFloat32) m->to(opts.dtype);  // anything built with an explicit float32
  return m;
}

ModelPtr load_model(const std::string& path, const LoadOptions& opts) { return load_model_with_hook(path, opts, nullptr); }

ModelPtr load_model_with_hook(const std::string& path, const LoadOptions& opts, const LoadHook& hook_in) {
  namespace fs = std::filesystem;
  PEFT_CHECK(fs::exists(path), path, ": no such file or folder");
  nlohmann::json config;
  TensorMap weights;
  std::string llama2c = find_llama2c_checkpoint(path);
  if (!llama2c.empty()) {
    import_llama2c(llama2c, &config, &weights);
  } else {
    std::string cfg_path = join_path(path, "config.json");
    PEFT_CHECK(fs::exists(cfg_path), path, ": no config.json (expected a Hugging Face model folder or a llama2.c .bin)");
    config = read_json(cfg_path);
    if (opts.load_weights) weights = load_checkpoint_dir(path);
  }
  // The config alone decides how much create_model allocates; with weights on disk that is
  // bounded by their size (io/memory_budget.h): a hostile config.json cannot take the machine.
  uint64_t weight_bytes = 0;
  for (auto& kv : weights)  // a quantized (integer) tensor stands for up to 8x its bytes in float32
    weight_bytes += kv.second.numel() * kv.second.element_size() * (kv.second.is_floating_point() ? 1 : 8);
  const std::string cfg_path = llama2c.empty() ? join_path(path, "config.json") : llama2c;
  // A bitsandbytes checkpoint (quantization_config): its quantized Linears load as QuantLinear.
  LoadHook hook = hook_in;
  if (!hook && config.is_object() && config.contains("quantization_config") && !config["quantization_config"].is_null()) {
    auto qc = quant::QuantConfig::from_json(config["quantization_config"], cfg_path);
    hook = [qc](PretrainedModel& m, TensorMap& w, const std::string& src) { prepare_quantized_slots(m, qc, w, src); };
  }
  ModelPtr m = with_context(cfg_path, [&] {
    if (!opts.load_weights) return create_model(config, opts);
    MemoryBudget budget(MemoryBudget::cap(4 * weight_bytes + (1ull << 30)), cfg_path,
                        "the model this config describes (cap: 4 x its weights + 1 GiB)");
    return create_model(config, opts);
  });
  m->name_or_path = path;
  if (opts.load_weights) {
    if (hook) hook(*m, weights, path);
    // A fresh task head (e.g. SeqCls on a causal-LM checkpoint) is not in the checkpoint.
    m->load_weights(weights, path, /*strict=*/true);
  }
  m->after_load();
  return m;
}

void PretrainedModel::load_weights(const TensorMap& weights_in, const std::string& source, bool strict) {
  torch::NoGradGuard ng;
  std::map<std::string, torch::Tensor> targets;
  for (auto& p : named_parameters()) targets[p.key()] = p.value();
  for (auto& b : named_buffers()) targets[b.key()] = b.value();
  // Quantized Linears (models/quant_linear.h) read their bitsandbytes tensors themselves.
  const TensorMap rest = load_quantized_layers(*this, weights_in, source, &targets);
  const TensorMap& weights = rest;
  // Names as transformers resolves them: legacy LayerNorm gamma/beta, and a checkpoint of the
  // bare encoder (`embeddings...`) loaded into a task model (`bert.embeddings...`) or the other
  // way round (base_model_prefix).
  std::vector<std::string> children;
  for (auto& ch : named_children()) children.push_back(ch.key());
  auto resolve = [&](const std::string& name) -> std::string {
    if (targets.count(name) || ignorable_key(name)) return name;
    std::vector<std::string> cands = {name};
    auto ends = [](const std::string& s, const std::string& suf) {
      return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
    };
    if (ends(name, ".gamma")) cands.push_back(name.substr(0, name.size() - 6) + ".weight");
    if (ends(name, ".beta")) cands.push_back(name.substr(0, name.size() - 5) + ".bias");
    for (auto& c : cands) {
      if (targets.count(c)) return c;
      for (auto& p : children)
        if (targets.count(p + "." + c) || ignorable_key(p + "." + c)) return p + "." + c;
      auto dot = c.find('.');
      if (dot != std::string::npos && targets.count(c.substr(dot + 1))) return c.substr(dot + 1);
    }
    return name;
  };
  for (auto& [name_in, t] : weights) {
    const std::string name = resolve(name_in);
    auto it = targets.find(name);
    if (it == targets.end()) {
      if (ignorable_key(name) || !strict) continue;
      fail(source, ": tensor '", name, "' has no parameter in ", model_type(),
           " (hint: checkpoint of another architecture, or config.json does not match?)");
    }
    torch::Tensor dst = it->second;
    PEFT_CHECK(dst.sizes() == t.sizes(), source, ": tensor '", name, "' has shape ", t.sizes(), ", expected ",
               dst.sizes(), " (hint: config.json from another model?)");
    // Alias when dtype and device already match (memory-mapped, copy-on-write), else convert.
    dst.set_data(t.to(dst.device(), dst.scalar_type()));
    targets.erase(it);
  }
  std::vector<std::string> missing;
  for (auto& [name, t] : targets)
    if (!ignorable_key(name)) missing.push_back(name);
  // A classification head absent from a base checkpoint is initialised fresh, as transformers does.
  std::vector<std::string> really_missing;
  for (auto& n : missing)
    if (!(task() == TaskType::SeqCls && (n.rfind("score.", 0) == 0 || n.rfind("classifier.", 0) == 0)))
      really_missing.push_back(n);
  if (!really_missing.empty()) {
    std::string list;
    for (size_t i = 0; i < really_missing.size() && i < 5; ++i) list += " '" + really_missing[i] + "'";
    fail(source, ": ", really_missing.size(), " tensor(s) missing from the checkpoint:", list,
         really_missing.size() > 5 ? " ..." : "");
  }
}

TensorMap PretrainedModel::state_dict() const {
  TensorMap out;
  for (auto& p : named_parameters()) out[p.key()] = p.value();
  for (auto& b : named_buffers()) out[b.key()] = b.value();
  add_quantized_state(*this, &out);  // bitsandbytes' layout for quantized Linears
  return out;
}

void PretrainedModel::save_pretrained(const std::string& dir) const {
  std::filesystem::create_directories(dir);
  TensorMap sd;
  for (auto& [k, v] : state_dict())
    if (!ignorable_key(k)) sd[k] = v;
  save_safetensors(join_path(dir, "model.safetensors"), sd, {{"format", "pt"}});
  write_json(join_path(dir, "config.json"), config);
}

int64_t cfg_int(const nlohmann::json& c, const std::string& key) {
  PEFT_CHECK(c.contains(key) && !c[key].is_null(), "config.json: missing required key '", key, "'");
  PEFT_CHECK(c[key].is_number_integer(), "config.json: key '", key, "' must be an integer, got ", c[key].dump());
  return c[key].get<int64_t>();
}
int64_t cfg_int(const nlohmann::json& c, const std::string& key, int64_t dflt) {
  return c.contains(key) && !c[key].is_null() ? cfg_int(c, key) : dflt;
}
double cfg_double(const nlohmann::json& c, const std::string& key, double dflt) {
  if (!c.contains(key) || c[key].is_null()) return dflt;
  PEFT_CHECK(c[key].is_number(), "config.json: key '", key, "' must be a number, got ", c[key].dump());
  return c[key].get<double>();
}
bool cfg_bool(const nlohmann::json& c, const std::string& key, bool dflt) {
  if (!c.contains(key) || c[key].is_null()) return dflt;
  PEFT_CHECK(c[key].is_boolean(), "config.json: key '", key, "' must be true/false, got ", c[key].dump());
  return c[key].get<bool>();
}
std::string cfg_str(const nlohmann::json& c, const std::string& key, const std::string& dflt) {
  if (!c.contains(key) || c[key].is_null()) return dflt;
  PEFT_CHECK(c[key].is_string(), "config.json: key '", key, "' must be a string, got ", c[key].dump());
  return c[key].get<std::string>();
}

torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& labels) {
  auto V = logits.size(-1);
  auto shift_logits = logits.slice(1, 0, -1).reshape({-1, V}).to(compute_dtype(logits.scalar_type()));
  auto shift_labels = labels.slice(1, 1).reshape({-1});
  return torch::nn::functional::cross_entropy(
      shift_logits, shift_labels, torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
}

torch::Tensor attention_bias(const torch::Tensor& mask, int64_t B, int64_t tq, int64_t tk, bool causal,
                             torch::Dtype dtype, torch::Device device) {
  auto opts = torch::TensorOptions().device(device);
  torch::Tensor allowed = torch::ones({B, 1, tq, tk}, opts.dtype(torch::kBool));
  if (mask.defined()) {
    PEFT_CHECK(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == tk, "attention_mask has shape ",
               mask.sizes(), ", expected [", B, ", ", tk, "] (batch, past + seq)");
    allowed = allowed & mask.to(device).to(torch::kBool).view({B, 1, 1, tk});
  }
  if (causal) {
    // Query i (absolute position tk - tq + i) sees keys 0 .. tk - tq + i.
    auto qi = torch::arange(tq, opts.dtype(torch::kLong)).view({tq, 1}) + (tk - tq);
    auto kj = torch::arange(tk, opts.dtype(torch::kLong)).view({1, tk});
    allowed = allowed & (kj <= qi).view({1, 1, tq, tk});
  }
  auto zero = torch::zeros({}, opts.dtype(dtype));
  auto neg = torch::full({}, std::numeric_limits<float>::lowest(), opts.dtype(torch::kFloat32)).to(dtype);
  if (dtype == torch::kFloat64) neg = torch::full({}, std::numeric_limits<double>::lowest(), opts.dtype(dtype));
  return torch::where(allowed, zero, neg);
}

torch::Tensor prefix_gate_of_queries(const torch::Tensor& s, const torch::Tensor& visible, torch::Tensor* cached) {
  torch::Tensor all = s;
  if (cached) {
    if (cached->defined()) all = torch::cat({cached->to(s.scalar_type()), s}, 1);
    *cached = all;
  }
  PEFT_CHECK(visible.dim() == 4 && visible.size(-1) == all.size(1), "prefix gate: the attention sees ", visible.size(-1),
             " input tokens but has scores for ", all.size(1));
  auto seen = visible.to(s.scalar_type());
  auto sum = (seen * all.view({all.size(0), 1, 1, all.size(1)})).sum(-1, true);
  return sum / seen.sum(-1, true).clamp_min(1.0);
}

torch::Tensor gate_prefix_columns(const torch::Tensor& t, const torch::Tensor& g, int64_t P) {
  const int64_t K = t.size(-1);
  return torch::cat({t.narrow(-1, 0, P) * g.to(t.scalar_type()), t.narrow(-1, P, K - P)}, -1);
}

LayerPrefixGate layer_prefix_gate(const PrefixGate* gate, int site, int64_t layer, int64_t P, const torch::Tensor& visible,
                                  torch::Tensor* cached) {
  if (!gate) return {};
  PEFT_CHECK(gate->scores, "prefix gate: no score function");
  PEFT_CHECK(P > 0, "prefix gate: the attention layer has no prefix to gate (layer ", layer, ")");
  return {P, [gate, site, layer, visible, cached](const torch::Tensor& x) {
            return prefix_gate_of_queries(gate->scores(site, layer, x), visible, cached);
          }};
}

std::vector<LayerPrefixGate> kv_prefix_gates(const PrefixGate* gate, int64_t n, const torch::Tensor& bias, KVCache* cache) {
  std::vector<LayerPrefixGate> gates(n);
  if (!gate) return gates;
  const int64_t P = gate->prefix_length, K = bias.size(-1), T = bias.size(-2);
  PEFT_CHECK(P > 0 && K - T >= P, "prefix gate: the KV cache holds ", K - T, " keys, fewer than the prefix's ", P);
  auto visible = bias.narrow(-1, P, K - P) == 0;  // input tokens each query attends (not masked)
  if (cache) cache->gate_scores.resize(n);
  for (int64_t l = 0; l < n; ++l)
    gates[l] = layer_prefix_gate(gate, PrefixGate::kSelf, l, P, visible, cache ? &cache->gate_scores[l] : nullptr);
  return gates;
}

}  // namespace peft
