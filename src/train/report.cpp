// write_training_report: metric curves as a self-contained SVG, wrapped in a small HTML page.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/report.h"

namespace peft {

namespace {

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> pts;  // (step, value)
};

struct Chart {
  std::string title;
  std::vector<Series> series;
};

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string num(double v, const char* fmt = "%.4g") {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

// "Nice" tick values covering [lo, hi] (about 5).
std::vector<double> ticks(double lo, double hi) {
  double span = hi - lo;
  if (!(span > 0)) return {lo};
  double raw = span / 5, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) t.push_back(std::abs(v) < step * 1e-9 ? 0 : v);
  return t;
}

std::vector<Chart> build_charts(const std::vector<nlohmann::json>& records) {
  std::map<std::string, Series> by_key;
  std::vector<std::string> order;
  for (auto& r : records) {
    if (r.contains("train_tokens_per_second")) continue;  // the end-of-run summary, not a curve point
    if (!r.is_object() || !r.contains("step") || !r["step"].is_number()) continue;
    double step = r["step"].get<double>();
    for (auto& [k, v] : r.items()) {
      if (k == "step" || k == "epoch" || !v.is_number()) continue;
      double x = v.get<double>();
      if (!std::isfinite(x)) continue;
      if (!by_key.count(k)) {
        order.push_back(k);
        by_key[k].name = k;
      }
      by_key[k].pts.emplace_back(step, x);
    }
  }
  std::vector<Chart> charts;
  Chart loss{"loss", {}};
  for (const char* k : {"loss", "train_loss", "eval_loss"})
    if (by_key.count(k)) loss.series.push_back(by_key[k]);
  if (!loss.series.empty()) charts.push_back(loss);
  for (auto& k : order) {
    if (k == "loss" || k == "train_loss" || k == "eval_loss") continue;
    charts.push_back({k, {by_key[k]}});
  }
  return charts;
}

void draw_chart(std::string& s, const Chart& c, double x0, double y0, double w, double h) {
  const double left = 70, right = 150, top = 30, bottom = 45;
  double pw = w - left - right, ph = h - top - bottom;
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (auto& se : c.series)
    for (auto& [x, y] : se.pts) {
      xmin = std::min(xmin, x), xmax = std::max(xmax, x);
      ymin = std::min(ymin, y), ymax = std::max(ymax, y);
    }
  if (xmax <= xmin) xmin -= 1, xmax += 1;
  if (ymax <= ymin) {
    double pad = std::abs(ymin) > 0 ? std::abs(ymin) * 0.05 : 1;
    ymin -= pad, ymax += pad;
  }
  auto X = [&](double v) { return x0 + left + (v - xmin) / (xmax - xmin) * pw; };
  auto Y = [&](double v) { return y0 + top + (1 - (v - ymin) / (ymax - ymin)) * ph; };
  s += "<g class=\"chart\">\n";
  s += "<text x=\"" + num(x0 + left + pw / 2) + "\" y=\"" + num(y0 + 18) +
       "\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">" + esc(c.title) + "</text>\n";
  // Axes.
  s += "<line x1=\"" + num(X(xmin)) + "\" y1=\"" + num(y0 + top + ph) + "\" x2=\"" + num(X(xmax)) + "\" y2=\"" +
       num(y0 + top + ph) + "\" stroke=\"#000\"/>\n";
  s += "<line x1=\"" + num(X(xmin)) + "\" y1=\"" + num(y0 + top) + "\" x2=\"" + num(X(xmin)) + "\" y2=\"" +
       num(y0 + top + ph) + "\" stroke=\"#000\"/>\n";
  for (double t : ticks(xmin, xmax)) {
    s += "<line x1=\"" + num(X(t)) + "\" y1=\"" + num(y0 + top + ph) + "\" x2=\"" + num(X(t)) + "\" y2=\"" +
         num(y0 + top + ph + 5) + "\" stroke=\"#000\"/>\n";
    s += "<text x=\"" + num(X(t)) + "\" y=\"" + num(y0 + top + ph + 18) +
         "\" text-anchor=\"middle\" font-size=\"11\">" + num(t, "%g") + "</text>\n";
  }
  for (double t : ticks(ymin, ymax)) {
    s += "<line x1=\"" + num(X(xmin) - 5) + "\" y1=\"" + num(Y(t)) + "\" x2=\"" + num(X(xmax)) + "\" y2=\"" + num(Y(t)) +
         "\" stroke=\"#ddd\"/>\n";
    s += "<text x=\"" + num(X(xmin) - 8) + "\" y=\"" + num(Y(t) + 4) + "\" text-anchor=\"end\" font-size=\"11\">" +
         num(t, "%.4g") + "</text>\n";
  }
  s += "<text x=\"" + num(x0 + left + pw / 2) + "\" y=\"" + num(y0 + h - 8) +
       "\" text-anchor=\"middle\" font-size=\"12\">step</text>\n";
  s += "<text x=\"" + num(x0 + 16) + "\" y=\"" + num(y0 + top + ph / 2) + "\" text-anchor=\"middle\" font-size=\"12\" "
       "transform=\"rotate(-90 " + num(x0 + 16) + " " + num(y0 + top + ph / 2) + ")\">" + esc(c.title) + "</text>\n";
  // Curves and legend.
  for (size_t i = 0; i < c.series.size(); ++i) {
    const Series& se = c.series[i];
    std::string color = kColors[i % (sizeof kColors / sizeof *kColors)];
    std::string pts;
    for (auto& [x, y] : se.pts) pts += (pts.empty() ? "" : " ") + num(X(x), "%.2f") + "," + num(Y(y), "%.2f");
    s += "<polyline data-series=\"" + esc(se.name) + "\" fill=\"none\" stroke=\"" + color +
         "\" stroke-width=\"1.5\" points=\"" + pts + "\"/>\n";
    if (se.pts.size() <= 30)
      for (auto& [x, y] : se.pts)
        s += "<circle cx=\"" + num(X(x), "%.2f") + "\" cy=\"" + num(Y(y), "%.2f") + "\" r=\"2.5\" fill=\"" + color +
             "\"/>\n";
    double ly = y0 + top + 10 + 18 * static_cast<double>(i);
    s += "<line x1=\"" + num(x0 + w - right + 15) + "\" y1=\"" + num(ly) + "\" x2=\"" + num(x0 + w - right + 35) +
         "\" y2=\"" + num(ly) + "\" stroke=\"" + color + "\" stroke-width=\"2\"/>\n";
    s += "<text x=\"" + num(x0 + w - right + 40) + "\" y=\"" + num(ly + 4) + "\" font-size=\"12\">" + esc(se.name) +
         "</text>\n";
  }
  s += "</g>\n";
}

std::string render_svg(const std::vector<Chart>& charts, const std::string& title) {
  const double W = 760, H = 280;
  double total_h = 40 + H * static_cast<double>(std::max<size_t>(charts.size(), 1));
  std::string s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(W) + "\" height=\"" + num(total_h) +
                  "\" viewBox=\"0 0 " + num(W) + " " + num(total_h) + "\" font-family=\"sans-serif\">\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n";
  s += "<text x=\"" + num(W / 2) + "\" y=\"26\" text-anchor=\"middle\" font-size=\"18\">" + esc(title) + "</text>\n";
  if (charts.empty())
    s += "<text x=\"" + num(W / 2) + "\" y=\"120\" text-anchor=\"middle\" font-size=\"14\">no metrics logged</text>\n";
  for (size_t i = 0; i < charts.size(); ++i) draw_chart(s, charts[i], 0, 40 + H * static_cast<double>(i), W, H);
  s += "</svg>\n";
  return s;
}

std::string render_html(const std::string& svg, const std::vector<Chart>& charts,
                        const std::vector<nlohmann::json>& records, const std::string& title) {
  std::string h = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"/><title>" + esc(title) +
                  "</title>\n<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
                  "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
                  "td:first-child{text-align:left}</style></head><body>\n<h1>" + esc(title) + "</h1>\n";
  h += svg;
  h += "<h2>Summary</h2>\n<table><tr><th>metric</th><th>points</th><th>last</th><th>min</th><th>max</th>"
       "<th>last step</th></tr>\n";
  for (auto& c : charts)
    for (auto& se : c.series) {
      double mn = INFINITY, mx = -INFINITY;
      for (auto& p : se.pts) mn = std::min(mn, p.second), mx = std::max(mx, p.second);
      h += "<tr><td>" + esc(se.name) + "</td><td>" + std::to_string(se.pts.size()) + "</td><td>" +
           num(se.pts.back().second, "%.6g") + "</td><td>" + num(mn, "%.6g") + "</td><td>" + num(mx, "%.6g") +
           "</td><td>" + num(se.pts.back().first, "%g") + "</td></tr>\n";
    }
  h += "</table>\n";
  // Evaluation records (any key starting with "eval_"), at most the last 200.
  std::vector<const nlohmann::json*> evals;
  std::set<std::string> cols;
  for (auto& r : records) {
    if (!r.is_object()) continue;
    bool is_eval = false;
    for (auto& [k, v] : r.items()) is_eval = is_eval || k.rfind("eval_", 0) == 0;
    if (!is_eval) continue;
    evals.push_back(&r);
    for (auto& [k, v] : r.items())
      if (k != "step") cols.insert(k);
  }
  if (!evals.empty()) {
    if (evals.size() > 200) evals.erase(evals.begin(), evals.end() - 200);
    h += "<h2>Evaluations</h2>\n<table><tr><th>step</th>";
    for (auto& c : cols) h += "<th>" + esc(c) + "</th>";
    h += "</tr>\n";
    for (auto* r : evals) {
      h += "<tr><td>" + (r->contains("step") ? esc(r->at("step").dump()) : std::string()) + "</td>";
      for (auto& c : cols) {
        std::string cell;
        if (r->contains(c)) {
          const auto& v = r->at(c);
          cell = v.is_number_float() ? num(v.get<double>(), "%.6g") : v.is_string() ? v.get<std::string>() : v.dump();
        }
        h += "<td>" + esc(cell) + "</td>";
      }
      h += "</tr>\n";
    }
    h += "</table>\n";
  }
  return h + "</body></html>\n";
}

}  // namespace

std::string write_training_report(const std::string& dir, const std::vector<nlohmann::json>& records,
                                  const std::string& title) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  PEFT_CHECK(!ec, dir, ": cannot create the report folder: ", ec.message());
  auto charts = build_charts(records);
  std::string svg = render_svg(charts, title);
  write_file_atomic(join_path(dir, "report.svg"), svg);
  write_file_atomic(join_path(dir, "report.html"), render_html(svg, charts, records, title));
  return svg;
}

}  // namespace peft
