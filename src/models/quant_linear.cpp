// QuantLinear: the frozen quantized Linear (models/quant_linear.h).
#include "models/quant_linear.h"

#include <torch/torch.h>

#include <filesystem>
#include <iomanip>
#include <set>
#include <sstream>

#include "models/load_hook.h"
#include "models/release_memory.h"
#include "peft/error.h"
#include "peft/io.h"

namespace peft {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// y = x W^T with W dequantized in forward and again in backward (only dL/dx flows: the stored
// weight has no gradient). The quantized tensors travel in saved_data, so the layer's lifetime
// does not matter to a pending backward.
struct QuantMatmul : torch::autograd::Function<QuantMatmul> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const QuantLinear* l) {
    const auto cd = l->compute_dtype;
    ctx->saved_data["type"] = static_cast<int64_t>(l->type);
    ctx->saved_data["cd"] = static_cast<int64_t>(cd);
    if (l->type == quant::QuantType::Int8) {
      ctx->saved_data["CB"] = l->q8.CB;
      ctx->saved_data["SCB"] = l->q8.SCB;
    } else {
      const auto& q = l->q4;
      ctx->saved_data["packed"] = q.packed;
      ctx->saved_data["absmax"] = q.absmax;
      ctx->saved_data["code"] = q.code;
      ctx->saved_data["nested"] = q.nested;
      ctx->saved_data["bs"] = q.blocksize;
      ctx->saved_data["out"] = q.shape[0];
      ctx->saved_data["in"] = q.shape[1];
      if (q.nested) {
        ctx->saved_data["nabsmax"] = q.nested_absmax;
        ctx->saved_data["ncode"] = q.nested_code;
        ctx->saved_data["nbs"] = q.nested_blocksize;
        ctx->saved_data["offset"] = q.offset;
      }
    }
    return torch::nn::functional::linear(x, l->dequantized_weight(cd));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    auto& d = ctx->saved_data;
    const auto cd = static_cast<torch::ScalarType>(d["cd"].toInt());
    torch::Tensor W;
    if (static_cast<quant::QuantType>(d["type"].toInt()) == quant::QuantType::Int8) {
      quant::QuantInt8 q;
      q.CB = d["CB"].toTensor();
      q.SCB = d["SCB"].toTensor();
      W = quant::dequantize_int8(q, cd);
    } else {
      quant::Quant4bit q;
      q.type = static_cast<quant::QuantType>(d["type"].toInt());
      q.packed = d["packed"].toTensor();
      q.absmax = d["absmax"].toTensor();
      q.code = d["code"].toTensor();
      q.nested = d["nested"].toBool();
      q.blocksize = d["bs"].toInt();
      q.shape = {d["out"].toInt(), d["in"].toInt()};
      if (q.nested) {
        q.nested_absmax = d["nabsmax"].toTensor();
        q.nested_code = d["ncode"].toTensor();
        q.nested_blocksize = d["nbs"].toInt();
        q.offset = d["offset"].toDouble();
      }
      W = quant::dequantize_4bit(q, cd);
    }
    return {grad[0].matmul(W), torch::Tensor()};
  }
};

bool path_has_component(const std::string& path, const std::string& name) {
  if (name.empty()) return false;
  return path == name || path.rfind(name + ".", 0) == 0 || path.find("." + name + ".") != std::string::npos ||
         (path.size() > name.size() && path.compare(path.size() - name.size() - 1, name.size() + 1, "." + name) == 0);
}

// Data pointers held by more than one parameter (tied weights stay in float, as transformers
// keeps tied modules out of the conversion). Not storages: every tensor of a memory-mapped
// checkpoint lives in the one storage of the map.
std::set<const void*> shared_storages(const PretrainedModel& m) {
  std::map<const void*, int> count;
  std::set<const void*> out;
  for (auto& p : m.named_parameters(/*recurse=*/true)) {
    if (!p.value().defined() || !p.value().numel()) continue;
    if (++count[p.value().data_ptr()] > 1) out.insert(p.value().data_ptr());
  }
  return out;
}

// The plain Linear slots to quantize, in slot order.
std::vector<std::pair<SlotRef, Linear*>> eligible(PretrainedModel& m, const quant::QuantConfig& cfg, QuantizeReport* rep) {
  auto shared = shared_storages(m);
  std::vector<std::pair<SlotRef, Linear*>> out;
  for (auto& ref : find_slots(m)) {
    auto l = ref.get();
    auto* lin = dynamic_cast<Linear*>(l.get());
    if (!lin || dynamic_cast<QuantLinear*>(lin)) continue;
    if (quantization_skips(m, cfg, ref.path) ||
        (lin->weight.defined() && lin->weight.numel() && shared.count(lin->weight.data_ptr()))) {
      if (rep) rep->skipped.push_back(ref.path);
      continue;
    }
    out.emplace_back(ref, lin);
  }
  return out;
}

// The file holding tensor `key` of checkpoint folder `source` (for errors): the shard named by
// model.safetensors.index.json, else model.safetensors; `source` itself when it is no folder.
std::string file_of(const std::string& source, const std::string& key) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(source, ec)) return source;
  const std::string idx = join_path(source, "model.safetensors.index.json");
  if (file_exists(idx)) {
    try {
      auto j = read_json(idx);
      if (j.contains("weight_map") && j["weight_map"].is_object() && j["weight_map"].contains(key) &&
          j["weight_map"][key].is_string())
        return join_path(source, j["weight_map"][key].get<std::string>());
    } catch (const std::exception&) {
    }
  }
  const std::string single = join_path(source, "model.safetensors");
  return file_exists(single) ? single : source;
}

void count(QuantizeReport* rep, const QuantLinear& q) {
  rep->layers += 1;
  rep->params += q.numel();
  rep->bytes += q.storage_bytes();
  if (q.type != quant::QuantType::Int8) rep->table_bytes += q.q4.code.numel() * 4 + (q.q4.nested ? q.q4.nested_code.numel() * 4 : 0);
}

}  // namespace

QuantLinear::QuantLinear(int64_t in, int64_t out, bool has_bias, const quant::QuantConfig& cfg)
    : Linear(1, 0, false), type(cfg.type), compute_dtype(cfg.compute_dtype) {
  PEFT_CHECK(compute_dtype == torch::kFloat32 || compute_dtype == torch::kBFloat16 || compute_dtype == torch::kFloat16,
             "quantized Linear: compute dtype must be float32, bfloat16 or float16, got ", compute_dtype);
  in_features = in;
  out_features = out;
  conv1d = false;  // stored [out, in] whatever the source layout (bitsandbytes transposes Conv1D too)
  weight.set_requires_grad(false);  // the empty placeholder never trains
  if (has_bias) bias = register_parameter("bias", torch::zeros({out}), /*requires_grad=*/false);
}

QuantLinear::QuantLinear(int64_t in, int64_t out, const torch::Tensor& w, bool src_conv1d, const torch::Tensor& b,
                         const quant::QuantConfig& cfg)
    : QuantLinear(in, out, false, cfg) {
  torch::NoGradGuard ng;
  auto W = src_conv1d ? w.t() : w;
  PEFT_CHECK(W.dim() == 2 && W.size(0) == out && W.size(1) == in, "quantized Linear: weight of shape ", w.sizes(),
             " for a layer of ", in, " -> ", out, " features");
  if (type == quant::QuantType::Int8) q8 = quant::quantize_int8_rowwise(W);
  else q4 = quant::quantize_4bit(W, type, cfg.blocksize, cfg.double_quant);
  if (b.defined()) bias = register_parameter("bias", b.detach(), /*requires_grad=*/false);
}

int64_t QuantLinear::storage_bytes() const {
  return type == quant::QuantType::Int8 ? q8.storage_bytes() : q4.storage_bytes();
}

void QuantLinear::set_4bit(quant::Quant4bit q, const std::string& what) {
  PEFT_CHECK(type != quant::QuantType::Int8, what, ": a 4-bit weight for a layer configured as int8");
  PEFT_CHECK(q.shape.size() == 2 && q.shape[0] == out_features && q.shape[1] == in_features, what,
             ": quant_state shape [", q.shape.size() ? q.shape[0] : 0, ", ", q.shape.size() > 1 ? q.shape[1] : 0,
             "], expected [", out_features, ", ", in_features, "] (hint: config.json from another model?)");
  type = q.type;
  q4 = std::move(q);
}

void QuantLinear::set_int8(quant::QuantInt8 q, const std::string& what) {
  PEFT_CHECK(q.CB.size(0) == out_features && q.CB.size(1) == in_features, what, ": int8 weight of shape ", q.CB.sizes(),
             ", expected [", out_features, ", ", in_features, "]");
  type = quant::QuantType::Int8;
  q8 = std::move(q);
}

void QuantLinear::requantize(const torch::Tensor& w_out_in) {
  torch::NoGradGuard ng;
  PEFT_CHECK(w_out_in.dim() == 2 && w_out_in.size(0) == out_features && w_out_in.size(1) == in_features,
             "quantized Linear: requantizing a weight of shape ", w_out_in.sizes(), " for a layer of ", in_features,
             " -> ", out_features, " features");
  PEFT_CHECK(torch::isfinite(w_out_in).all().item<bool>(),
             "quantized Linear: the weight to requantize has NaN or Inf entries (the merged adapter is not finite)");
  if (type == quant::QuantType::Int8) {
    auto dt = q8.dtype;
    q8 = quant::quantize_int8_rowwise(w_out_in).to(q8.CB.device());
    q8.dtype = dt;
    return;
  }
  auto dt = q4.dtype;
  auto dev = q4.packed.device();
  q4 = quant::quantize_4bit(w_out_in, type, q4.blocksize, q4.nested).to(dev);
  q4.dtype = dt;
}

torch::Tensor QuantLinear::dequantized_weight(torch::ScalarType dtype) const {
  PEFT_CHECK(loaded(), "quantized Linear: the weight was never loaded");
  return type == quant::QuantType::Int8 ? quant::dequantize_int8(q8, dtype) : quant::dequantize_4bit(q4, dtype);
}

torch::Tensor QuantLinear::forward(const torch::Tensor& x) {
  // bitsandbytes' Linear4bit.forward: input cast to the compute dtype, output back to the input's.
  auto y = QuantMatmul::apply(x.to(compute_dtype), this);
  if (bias.defined()) y = y + bias.to(compute_dtype);
  return y.to(x.scalar_type());
}

std::shared_ptr<Layer> QuantLinear::clone_layer() const {
  quant::QuantConfig c;
  c.type = type;
  c.compute_dtype = compute_dtype;
  auto out = std::make_shared<QuantLinear>(in_features, out_features, bias.defined(), c);
  out->q4 = q4.packed.defined() ? q4.to(q4.packed.device()) : q4;
  if (q4.packed.defined()) {
    out->q4.packed = q4.packed.clone();
    out->q4.absmax = q4.absmax.clone();
  }
  if (q8.CB.defined()) out->q8 = {q8.CB.clone(), q8.SCB.clone(), q8.dtype};
  torch::NoGradGuard ng;
  if (bias.defined()) out->bias.copy_(bias);
  return out;
}

void QuantLinear::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  to(device, non_blocking);
  to(dtype, non_blocking);
}

void QuantLinear::to(torch::Dtype dtype, bool non_blocking) {
  // The stored weight keeps its format; only the float bias follows a dtype change.
  if (bias.defined()) bias.set_data(bias.to(dtype, non_blocking));
}

void QuantLinear::to(torch::Device device, bool non_blocking) {
  Linear::to(device, non_blocking);  // bias and the empty placeholder
  if (q4.packed.defined()) q4 = q4.to(device);
  if (q8.CB.defined()) q8 = q8.to(device);
}

int64_t dequantize_model(PretrainedModel& m, torch::ScalarType dtype) {
  torch::NoGradGuard ng;
  int64_t n = 0;
  for (auto& ref : find_slots(m)) {
    auto l = ref.get();
    auto* q = dynamic_cast<QuantLinear*>(l.get());
    if (!q) continue;
    auto lin = std::make_shared<Linear>(q->in_features, q->out_features, q->bias.defined());
    auto W = q->dequantized_weight(dtype);
    lin->weight.set_data(W);
    lin->weight.set_requires_grad(false);
    if (q->bias.defined()) {
      lin->bias.set_data(q->bias.detach().to(dtype));
      lin->bias.set_requires_grad(false);
    }
    ref.parent->replace_slot(ref.name, lin);
    ++n;
  }
  if (m.config.is_object()) m.config.erase("quantization_config");
  return n;
}

std::string QuantizeReport::to_string() const {
  std::ostringstream o;
  o << "quantized " << layers << " Linear layers (" << params << " weights, " << (bytes >> 10) << " KiB): "
    << std::fixed << std::setprecision(3) << bits_per_param() << " bits per parameter ("
    << bits_per_param_blocks() << " without the per-layer code tables)";
  if (!skipped.empty()) {
    o << "; kept in float:";
    for (size_t i = 0; i < skipped.size() && i < 4; ++i) o << " " << skipped[i];
    if (skipped.size() > 4) o << " ...";
  }
  return o.str();
}

bool quantization_skips(const PretrainedModel& m, const quant::QuantConfig& cfg, const std::string& path) {
  auto roles = m.roles();
  if (roles.count(role::kHead) && path_has_component(path, roles[role::kHead])) return true;
  for (auto& s : cfg.skip_modules)
    if (!s.empty() && path.find(s) != std::string::npos) return true;
  return false;
}

QuantizeReport quantize_model(PretrainedModel& m, const quant::QuantConfig& cfg,
                              const std::function<void(Linear&)>& prepare) {
  QuantizeReport rep;
  torch::NoGradGuard ng;
  for (auto& [ref, lin] : eligible(m, cfg, &rep)) {
    if (prepare) prepare(*lin);
    auto q = std::make_shared<QuantLinear>(lin->in_features, lin->out_features, lin->weight, lin->conv1d, lin->bias, cfg);
    q->to(lin->weight.device());
    ref.parent->replace_slot(ref.name, q);  // the float Linear (and its weight) is released here
    count(&rep, *q);
    release_free_memory();  // ... and its pages returned, not kept by the allocator
  }
  m.config["quantization_config"] = cfg.to_json();
  return rep;
}

QuantizeReport quantize_from_checkpoint(PretrainedModel& m, const quant::QuantConfig& cfg, TensorMap* weights,
                                        const std::string& source) {
  QuantizeReport rep;
  torch::NoGradGuard ng;
  for (auto& [ref, lin] : eligible(m, cfg, &rep)) {
    auto it = weights->find(ref.path + ".weight");
    PEFT_CHECK(it != weights->end(), source, ": tensor '", ref.path, ".weight' missing from the checkpoint");
    auto W = it->second;
    const auto want = lin->conv1d ? std::vector<int64_t>{lin->in_features, lin->out_features}
                                  : std::vector<int64_t>{lin->out_features, lin->in_features};
    PEFT_CHECK(W.sizes() == want, source, ": tensor '", it->first, "' has shape ", W.sizes(), ", expected ",
               torch::IntArrayRef(want), " (hint: config.json from another model?)");
    auto q = std::make_shared<QuantLinear>(lin->in_features, lin->out_features, W, lin->conv1d,
                                           lin->bias.defined() ? torch::zeros({lin->out_features}) : torch::Tensor(), cfg);
    weights->erase(it);  // the file's tensor is not kept (a converted copy is freed with W)
    ref.parent->replace_slot(ref.name, q);
    count(&rep, *q);
    W.reset();              // this layer's converted copy freed now, so that
    release_free_memory();  // its pages are returned with the rest
  }
  m.config["quantization_config"] = cfg.to_json();
  return rep;
}

void prepare_quantized_slots(PretrainedModel& m, const quant::QuantConfig& cfg, const TensorMap& weights,
                             const std::string& source) {
  for (auto& ref : find_slots(m)) {
    auto l = ref.get();
    auto* lin = dynamic_cast<Linear*>(l.get());
    if (!lin || dynamic_cast<QuantLinear*>(lin)) continue;
    const std::string key = ref.path + ".weight";
    const bool b4 = quant::has_4bit(weights, key), b8 = quant::has_int8(weights, ref.path);
    if (!b4 && !b8) {
      auto it = weights.find(key);
      PEFT_CHECK(it == weights.end() || it->second.is_floating_point(), file_of(source, key), ": tensor '", key, "' is ",
                 it->second.scalar_type(), " but has no quantization constants ('", key, ".absmax', '",
                 key, ".quant_state.bitsandbytes__nf4' or '", ref.path, ".SCB')");
      continue;
    }
    PEFT_CHECK(!(b4 && b8), file_of(source, key), ": tensor '", key, "' has both 4-bit and int8 constants");
    PEFT_CHECK(b4 == cfg.is_4bit(), file_of(source, key), ": tensor '", key, "' is stored ", b4 ? "4-bit" : "int8",
               " but quantization_config says ", cfg.is_4bit() ? "load_in_4bit" : "load_in_8bit");
    quant::QuantConfig c = cfg;
    ref.parent->replace_slot(ref.name, std::make_shared<QuantLinear>(lin->in_features, lin->out_features,
                                                                     lin->bias.defined(), c));
  }
}

TensorMap load_quantized_layers(PretrainedModel& m, const TensorMap& weights, const std::string& source,
                                std::map<std::string, torch::Tensor>* targets) {
  TensorMap rest = weights;
  for (auto& item : m.named_modules("", /*include_self=*/false)) {
    auto* q = dynamic_cast<QuantLinear*>(item.value().get());
    if (!q) continue;
    const std::string& p = item.key();
    if (targets) targets->erase(p + ".weight");
    const std::string key = p + ".weight";
    const std::string file = file_of(source, key);
    if (quant::has_4bit(weights, key)) {
      q->set_4bit(quant::read_4bit(weights, key, file), file + ": tensor '" + key + "'");
      for (auto& k : quant::keys_4bit(weights, key)) rest.erase(k);
    } else if (quant::has_int8(weights, p)) {
      q->set_int8(quant::read_int8(weights, p, file), file + ": tensor '" + key + "'");
      for (auto& k : quant::keys_int8(weights, p)) rest.erase(k);
    } else if (!q->loaded()) {
      auto it = weights.find(key);
      PEFT_CHECK(it == weights.end(), file, ": tensor '", key, "' (", it->second.scalar_type(),
                 ") has no quantization constants: missing '", key, ".quant_state.bitsandbytes__nf4' (or fp4) / '",
                 key, ".absmax', or '", p, ".SCB' for int8");
      fail(source, ": tensor '", key, "' missing from the checkpoint (a quantized layer)");
    }
  }
  return rest;
}

void add_quantized_state(const PretrainedModel& m, TensorMap* sd) {
  for (auto& item : m.named_modules("", /*include_self=*/false)) {
    auto* q = dynamic_cast<const QuantLinear*>(item.value().get());
    if (!q || !q->loaded()) continue;
    sd->erase(item.key() + ".weight");
    if (q->type == quant::QuantType::Int8) quant::write_int8(q->q8, item.key(), sd);
    else quant::write_4bit(q->q4, item.key() + ".weight", sd);
  }
}

ModelPtr load_model_quantized(const std::string& path, const quant::QuantConfig& cfg, const LoadOptions& opts,
                              QuantizeReport* report) {
  QuantizeReport rep;
  auto m = load_model_with_hook(path, opts, [&](PretrainedModel& model, TensorMap& w, const std::string& src) {
    PEFT_CHECK(!model.config.contains("quantization_config") || model.config["quantization_config"].is_null(), src,
               ": the checkpoint is already quantized (quantization_config in config.json): load it without --quantize");
    rep = quantize_from_checkpoint(model, cfg, &w, src);
  });
  if (report) *report = rep;
  return m;
}

}  // namespace peft
