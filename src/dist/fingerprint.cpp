// The run's fingerprint (compared across ranks when they join) and the parameter hash used to
// check that the ranks' adapters stay identical.
#include <torch/torch.h>

#include "peft/dist.h"
#include "peft/error.h"

namespace peft::dist {
namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull, kFnvPrime = 0x100000001b3ull;

void fnv(uint64_t& h, const void* data, size_t n) {
  auto p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * kFnvPrime;
}

std::string shown(const nlohmann::json& j) {
  if (j.is_null()) return "(absent)";
  std::string s = j.dump();
  return s.size() > 120 ? s.substr(0, 117) + "..." : s;
}

}  // namespace

nlohmann::json fingerprint(const nlohmann::json& recipe,
                           const std::vector<std::pair<std::string, torch::Tensor>>& trainable,
                           const std::vector<std::vector<int64_t>>& token_ids) {
  nlohmann::json layout = nlohmann::json::object();
  for (auto& [name, t] : trainable) layout[name] = str_cat(t.sizes(), " ", t.dtype());
  uint64_t h = kFnvOffset;
  for (auto& ids : token_ids) {
    const int64_t n = static_cast<int64_t>(ids.size());
    fnv(h, &n, sizeof n);
    fnv(h, ids.data(), ids.size() * sizeof(int64_t));
  }
  return {{"recipe", recipe},
          {"trainable_parameters", layout},
          {"training_data", {{"examples", token_ids.size()}, {"token_hash", std::to_string(h)}}}};
}

std::string first_difference(const nlohmann::json& a, const nlohmann::json& b, const std::string& path) {
  if (a.is_object() && b.is_object()) {
    for (auto& kv : a.items()) {
      std::string p = path.empty() ? kv.key() : path + "." + kv.key();
      std::string d = first_difference(kv.value(), b.contains(kv.key()) ? b.at(kv.key()) : nlohmann::json(), p);
      if (!d.empty()) return d;
    }
    for (auto& kv : b.items())
      if (!a.contains(kv.key()))
        return str_cat("key '", path.empty() ? kv.key() : path + "." + kv.key(), "' is (absent) vs ",
                       shown(kv.value()));
    return "";
  }
  if (a == b) return "";
  return str_cat("key '", path, "' is ", shown(a), " vs ", shown(b));
}

uint64_t tensor_hash(const std::vector<torch::Tensor>& ts) {
  uint64_t h = kFnvOffset;
  for (auto& t : ts) {
    auto c = t.detach().contiguous();
    fnv(h, c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  }
  return h;
}

}  // namespace peft::dist
