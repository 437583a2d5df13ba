// Pieces of `peft assess` (src/cli/assess.cpp): turning the finished cells into the table,
// JSON, CSV and HTML report.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace peft::cli {

/// Per-row aggregates over seeds: for each numeric key of the cells' results, mean and sample
/// standard deviation (0 with one seed). `cells` holds every finished cell's result.json.
nlohmann::json aggregate_rows(const std::vector<std::string>& labels, const std::vector<nlohmann::json>& cells);

/// Reads scripts/memory_vs_size.sh's JSON Lines (one `peft bench --worker` record per line with
/// the script's "config" label, e.g. "lora nf4", and the bench's "total" parameters and
/// "peak_rss_mib"); errors name the file, the line and the field.
std::vector<nlohmann::json> read_memory_vs_size(const std::string& path);
/// The survey's memory-vs-model-size plot (inline SVG): peak RSS against parameters (log scale),
/// one line per config.
std::string memory_vs_size_svg(const std::vector<nlohmann::json>& records);

/// Writes assessment.{md,csv,json,html} into `out`; `primary` is the quality metric the plots use;
/// `sizes` (may be empty: no plot) the memory-vs-size records.
void write_assessment(const std::string& out, const nlohmann::json& header, const nlohmann::json& rows,
                      const std::vector<nlohmann::json>& cells, const std::string& primary,
                      const std::vector<nlohmann::json>& sizes = {});

}  // namespace peft::cli
