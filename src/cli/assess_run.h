// Pieces of `peft assess` (src/cli/assess.cpp): running one cell of the matrix in child
// processes, and turning the finished cells into the table, JSON, CSV and HTML report.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace peft::cli {

/// A child process's exit status, wall time and peak resident set (wait4's ru_maxrss).
struct ChildRun {
  int status = -1;  // exit code; 128 + signal when killed
  double wall_s = 0;
  double peak_rss_mib = 0;
};

/// Runs argv[0] with `argv`, stdout and stderr appended to `log_path`; waits for it.
ChildRun run_child(const std::vector<std::string>& argv, const std::string& log_path);

/// Per-row aggregates over seeds: for each numeric key of the cells' results, mean and sample
/// standard deviation (0 with one seed). `cells` holds every finished cell's result.json.
nlohmann::json aggregate_rows(const std::vector<std::string>& labels, const std::vector<nlohmann::json>& cells);

/// Writes assessment.{md,csv,json,html} into `out`; `primary` is the quality metric the plots use.
void write_assessment(const std::string& out, const nlohmann::json& header, const nlohmann::json& rows,
                      const std::vector<nlohmann::json>& cells, const std::string& primary);

}  // namespace peft::cli
