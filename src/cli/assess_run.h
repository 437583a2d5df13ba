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

/// Writes assessment.{md,csv,json,html} into `out`; `primary` is the quality metric the plots use.
void write_assessment(const std::string& out, const nlohmann::json& header, const nlohmann::json& rows,
                      const std::vector<nlohmann::json>& cells, const std::string& primary);

}  // namespace peft::cli
