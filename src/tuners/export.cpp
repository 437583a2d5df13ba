#include "tuners/export.h"

#include <filesystem>
#include <map>

#include "peft/error.h"
#include "peft/tuner.h"

namespace peft {
namespace {
std::map<std::string, AdapterExporter>& registry() {
  static std::map<std::string, AdapterExporter> r;
  return r;
}
}  // namespace

bool register_adapter_exporter(const std::string& peft_type, AdapterExporter fn) {
  registry()[peft_type] = std::move(fn);
  return true;
}

std::vector<std::string> exportable_types() {
  std::vector<std::string> out;
  for (auto& kv : registry()) out.push_back(kv.first);
  return out;
}

ExportedAdapter export_adapter(const nlohmann::json& cfg, const TensorMap& tensors, const std::string& source) {
  std::string type = cfg.value("peft_type", std::string());
  auto it = registry().find(type);
  if (it == registry().end()) {
    std::string known;
    for (auto& t : exportable_types()) known += (known.empty() ? "" : ", ") + t;
    fail(source, ": peft_type '", type, "' has no separate inference form to export (exportable: ", known,
         "); load it as it is, or fold it into the base with `peft merge`");
  }
  return it->second(cfg, tensors, source);
}

std::string export_adapter_dir(const std::string& in, const std::string& out) {
  PEFT_CHECK(!(std::filesystem::exists(out) && std::filesystem::exists(in) && std::filesystem::equivalent(in, out)),
             "export: the output folder ", out, " is the input folder; choose another folder");
  auto cfg = read_adapter_config(in);
  std::string weights = join_path(in, "adapter_model.safetensors");
  PEFT_CHECK(file_exists(weights), weights, ": file not found");
  auto e = export_adapter(cfg, load_safetensors(weights), weights);
  std::filesystem::create_directories(out);
  save_safetensors(join_path(out, "adapter_model.safetensors"), e.tensors, {{"format", "pt"}});
  write_json(join_path(out, "adapter_config.json"), e.config);
  return e.config["peft_type"].get<std::string>();
}

}  // namespace peft
