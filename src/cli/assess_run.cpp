// Child processes and reports of `peft assess` (src/cli/assess.cpp).
#include "cli/assess_run.h"


#include <algorithm>
#include <cmath>
#include <iomanip>
#include <map>
#include <sstream>

#include "io/json_parse.h"
#include "io/lines.h"
#include "peft/error.h"
#include "peft/io.h"
#include "peft/tuner.h"

namespace peft::cli {

nlohmann::json aggregate_rows(const std::vector<std::string>& labels, const std::vector<nlohmann::json>& cells) {
  nlohmann::json rows = nlohmann::json::array();
  for (auto& label : labels) {
    std::map<std::string, std::vector<double>> vals;
    nlohmann::json row = {{"label", label}};
    for (auto& c : cells) {
      if (c["label"] != label) continue;
      row["method"] = c["method"];
      for (auto& kv : c.items())
        if (kv.value().is_number() && kv.key() != "seed") vals[kv.key()].push_back(kv.value().get<double>());
    }
    if (vals.empty()) continue;
    if (auto* card = method_card(row["method"].get<std::string>())) row["family"] = card->family;
    if (label == "full") row["family"] = "reference";
    for (auto& [k, v] : vals) {
      double m = 0, ss = 0;
      for (double x : v) m += x;
      m /= v.size();
      for (double x : v) ss += (x - m) * (x - m);
      row[k] = {{"mean", m}, {"std", v.size() > 1 ? std::sqrt(ss / (v.size() - 1)) : 0.0}, {"n", v.size()}};
    }
    rows.push_back(row);
  }
  return rows;
}

namespace {

std::string num(double v, int prec) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << v;
  return os.str();
}

// Columns of the table: key, header, digits. Quality columns are every eval_* / generation key.
struct Col {
  std::string key, head;
  int prec;
};

std::vector<Col> columns(const nlohmann::json& rows) {
  std::vector<Col> cols = {{"trainable_params", "trainable", 0}, {"trainable_pct", "trainable %", 3},
                           {"peak_rss_mib", "peak RSS MiB", 0},  {"tokens_per_s", "tokens/s", 0}};
  std::vector<std::string> quality;
  for (auto& r : rows)
    for (auto& kv : r.items())
      if ((kv.key().rfind("eval_", 0) == 0 || kv.key() == "bleu" || kv.key() == "chrf" || kv.key() == "rouge_l") &&
          kv.key() != "eval_generated" && std::find(quality.begin(), quality.end(), kv.key()) == quality.end())
        quality.push_back(kv.key());
  // The loss first, then the task metrics in name order.
  std::stable_sort(quality.begin(), quality.end(), [](const std::string& x, const std::string& y) {
    auto rank = [](const std::string& k) { return k == "eval_loss" ? 0 : k == "eval_perplexity" ? 1 : 2; };
    return rank(x) != rank(y) ? rank(x) < rank(y) : x < y;
  });
  for (auto& q : quality) cols.push_back({q, q, 4});
  return cols;
}

std::string cell_text(const nlohmann::json& row, const Col& c) {
  if (!row.contains(c.key)) return "-";
  const auto& v = row[c.key];
  std::string s = num(v["mean"].get<double>(), c.prec);
  if (v["n"].get<size_t>() > 1) s += " ± " + num(v["std"].get<double>(), c.prec);
  return s;
}

std::string markdown(const nlohmann::json& header, const nlohmann::json& rows) {
  auto cols = columns(rows);
  std::ostringstream os;
  os << "# peft assess: " << header["task"].get<std::string>() << " on " << header["model"].get<std::string>() << "\n\n"
     << "train " << header["train"].get<std::string>() << ", eval " << header["eval"].get<std::string>() << "; "
     << header["budget_steps"] << " steps of batch " << header["batch"] << " per method, " << header["seeds"]
     << " seed(s) (mean ± sample std); peak RSS of the training process; tokens/s of the optimizer steps.\n\n"
     << "| method | family |";
  for (auto& c : cols) os << " " << c.head << " |";
  os << "\n|---|---|";
  for (size_t i = 0; i < cols.size(); ++i) os << "---:|";
  os << "\n";
  for (auto& r : rows) {
    os << "| " << r["label"].get<std::string>() << " | " << r.value("family", "") << " |";
    for (auto& c : cols) os << " " << cell_text(r, c) << " |";
    os << "\n";
  }
  return os.str();
}

std::string csv(const nlohmann::json& rows) {
  auto cols = columns(rows);
  std::ostringstream os;
  os << "method,family";
  for (auto& c : cols) os << "," << c.key << "_mean," << c.key << "_std";
  os << "\n";
  for (auto& r : rows) {
    os << r["label"].get<std::string>() << "," << r.value("family", "");
    for (auto& c : cols) {
      if (!r.contains(c.key)) {
        os << ",,";
        continue;
      }
      os << std::setprecision(10) << "," << r[c.key]["mean"].get<double>() << "," << r[c.key]["std"].get<double>();
    }
    os << "\n";
  }
  return os.str();
}

std::string esc(const std::string& s) {
  std::string o;
  for (char ch : s) o += ch == '<' ? "&lt;" : ch == '>' ? "&gt;" : ch == '&' ? "&amp;" : std::string(1, ch);
  return o;
}

// A scatter plot (inline SVG): one labelled point per row; log-scaled x when asked.
std::string scatter(const nlohmann::json& rows, const std::string& xkey, const std::string& xname, bool logx,
                    const std::string& ykey, const std::string& yname) {
  struct P {
    double x, y;
    std::string label;
  };
  std::vector<P> pts;
  for (auto& r : rows)
    if (r.contains(xkey) && r.contains(ykey)) {
      double x = r[xkey]["mean"].get<double>(), y = r[ykey]["mean"].get<double>();
      if (logx && x <= 0) continue;
      pts.push_back({logx ? std::log10(x) : x, y, r["label"].get<std::string>()});
    }
  const double W = 560, H = 360, L = 70, R = 20, T = 30, B = 50;
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
    << "<text x=\"" << W / 2 << "\" y=\"16\" text-anchor=\"middle\" font-size=\"13\">" << esc(yname) << " vs " << esc(xname)
    << "</text>\n";
  if (pts.empty()) return s.str() + "<text x=\"20\" y=\"60\">no data</text></svg>\n";
  double x0 = pts[0].x, x1 = x0, y0 = pts[0].y, y1 = y0;
  for (auto& p : pts) x0 = std::min(x0, p.x), x1 = std::max(x1, p.x), y0 = std::min(y0, p.y), y1 = std::max(y1, p.y);
  const double px = (x1 - x0) > 0 ? (x1 - x0) * 0.08 : 0.5, py = (y1 - y0) > 0 ? (y1 - y0) * 0.08 : std::max(1e-3, std::abs(y0) * 0.1);
  x0 -= px, x1 += px, y0 -= py, y1 += py;
  auto X = [&](double v) { return L + (v - x0) / (x1 - x0) * (W - L - R); };
  auto Y = [&](double v) { return T + (1 - (v - y0) / (y1 - y0)) * (H - T - B); };
  s << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B
    << "\" fill=\"none\" stroke=\"#888\"/>\n";
  for (int i = 0; i <= 4; ++i) {
    const double xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    s << "<text x=\"" << X(xv) << "\" y=\"" << H - B + 15 << "\" text-anchor=\"middle\">"
      << (logx ? num(std::pow(10.0, xv), 3) : num(xv, 1)) << "</text>\n"
      << "<text x=\"" << L - 5 << "\" y=\"" << Y(yv) + 4 << "\" text-anchor=\"end\">" << num(yv, 3) << "</text>\n";
  }
  s << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">" << esc(xname)
    << (logx ? " (log scale)" : "") << "</text>\n";
  for (auto& p : pts)
    s << "<circle cx=\"" << X(p.x) << "\" cy=\"" << Y(p.y) << "\" r=\"4\" fill=\"#1f77b4\"/><text x=\"" << X(p.x) + 6
      << "\" y=\"" << Y(p.y) - 4 << "\">" << esc(p.label) << "</text>\n";
  return s.str() + "</svg>\n";
}

}  // namespace

std::vector<nlohmann::json> read_memory_vs_size(const std::string& path) {
  std::vector<nlohmann::json> out;
  const std::string bytes = read_file(path);
  for_each_nonblank_line(bytes, [&](int64_t n, const std::string& line) {
    const std::string where = path + ":" + std::to_string(n);
    auto j = parse_json_limited(line.data(), line.data() + line.size(), where);
    PEFT_CHECK(j.is_object(), where, ": not a JSON object");
    PEFT_CHECK(j.contains("config") && j["config"].is_string(), where,
               ": field 'config' (a label such as \"lora nf4\") missing or not a string");
    for (const char* k : {"total", "peak_rss_mib"})
      PEFT_CHECK(j.contains(k) && j[k].is_number() && j[k].get<double>() > 0, where, ": field '", k,
                 "' missing or not a positive number");
    out.push_back(std::move(j));
  });
  PEFT_CHECK(!out.empty(), path, ": no records");
  return out;
}

std::string memory_vs_size_svg(const std::vector<nlohmann::json>& records) {
  std::vector<std::string> order;  // configs in first-seen order
  std::map<std::string, std::vector<std::pair<double, double>>> series;
  for (auto& r : records) {
    const auto c = r["config"].get<std::string>();
    if (!series.count(c)) order.push_back(c);
    series[c].emplace_back(std::log10(r["total"].get<double>()), r["peak_rss_mib"].get<double>());
  }
  double x0 = 1e300, x1 = -1e300, y0 = 0, y1 = 0;
  for (auto& [c, pts] : series) {
    std::sort(pts.begin(), pts.end());
    for (auto& p : pts) x0 = std::min(x0, p.first), x1 = std::max(x1, p.first), y1 = std::max(y1, p.second);
  }
  const double px = x1 > x0 ? (x1 - x0) * 0.08 : 0.5;
  x0 -= px, x1 += px, y1 *= 1.08;
  const double W = 560, H = 360, L = 70, R = 130, T = 30, B = 50;
  auto X = [&](double v) { return L + (v - x0) / (x1 - x0) * (W - L - R); };
  auto Y = [&](double v) { return T + (1 - (v - y0) / (y1 - y0)) * (H - T - B); };
  static const char* colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n<text x=\"" << (W - R + L) / 2
    << "\" y=\"16\" text-anchor=\"middle\" font-size=\"13\">peak RSS (MiB) vs model size</text>\n<rect x=\"" << L
    << "\" y=\"" << T << "\" width=\"" << W - L - R << "\" height=\"" << H - T - B << "\" fill=\"none\" stroke=\"#888\"/>\n";
  for (int i = 0; i <= 4; ++i) {
    const double xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    s << "<text x=\"" << X(xv) << "\" y=\"" << H - B + 15 << "\" text-anchor=\"middle\">" << num(std::pow(10.0, xv) / 1e6, 3)
      << "M</text>\n<text x=\"" << L - 5 << "\" y=\"" << Y(yv) + 4 << "\" text-anchor=\"end\">" << num(yv, 0) << "</text>\n";
  }
  s << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 12
    << "\" text-anchor=\"middle\">parameters (log scale)</text>\n";
  for (size_t k = 0; k < order.size(); ++k) {
    const char* col = colors[k % 8];
    auto& pts = series[order[k]];
    s << "<polyline fill=\"none\" stroke=\"" << col << "\" stroke-width=\"1.5\" points=\"";
    for (auto& p : pts) s << X(p.first) << "," << Y(p.second) << " ";
    s << "\"/>\n";
    for (auto& p : pts) s << "<circle cx=\"" << X(p.first) << "\" cy=\"" << Y(p.second) << "\" r=\"3\" fill=\"" << col << "\"/>\n";
    s << "<text x=\"" << W - R + 10 << "\" y=\"" << T + 14 * (k + 1) << "\" fill=\"" << col << "\">" << esc(order[k])
      << "</text>\n";
  }
  return s.str() + "</svg>\n";
}

void write_assessment(const std::string& out, const nlohmann::json& header, const nlohmann::json& rows,
                      const std::vector<nlohmann::json>& cells, const std::string& primary,
                      const std::vector<nlohmann::json>& sizes) {
  const std::string md = markdown(header, rows);
  write_file_atomic(join_path(out, "assessment.md"), md);
  write_file_atomic(join_path(out, "assessment.csv"), csv(rows));
  write_json(join_path(out, "assessment.json"), {{"header", header}, {"rows", rows}, {"cells", cells}});
  std::ostringstream h;
  h << "<!doctype html><html><head><meta charset=\"utf-8\"><title>peft assess</title>"
       "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
       "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style></head><body>\n<h1>peft assess: "
    << esc(header["task"].get<std::string>()) << " on " << esc(header["model"].get<std::string>()) << "</h1>\n<table><tr><th>method</th><th>family</th>";
  auto cols = columns(rows);
  for (auto& c : cols) h << "<th>" << esc(c.head) << "</th>";
  h << "</tr>\n";
  for (auto& r : rows) {
    h << "<tr><td>" << esc(r["label"].get<std::string>()) << "</td><td>" << esc(r.value("family", "")) << "</td>";
    for (auto& c : cols) h << "<td>" << esc(cell_text(r, c)) << "</td>";
    h << "</tr>\n";
  }
  h << "</table>\n<p>" << scatter(rows, "trainable_pct", "trainable %", true, primary, primary) << "\n"
    << scatter(rows, "peak_rss_mib", "peak RSS (MiB)", false, primary, primary) << "\n"
    << scatter(rows, "trainable_pct", "trainable %", true, "peak_rss_mib", "peak RSS (MiB)") << "</p>\n";
  if (!sizes.empty()) h << "<h2>Memory vs model size</h2>\n<p>" << memory_vs_size_svg(sizes) << "</p>\n";
  h << "</body></html>\n";
  write_file_atomic(join_path(out, "assessment.html"), h.str());
}

}  // namespace peft::cli
