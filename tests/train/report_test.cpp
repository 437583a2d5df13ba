// Progress bar output, the JSONL metrics log and the SVG/HTML training report.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "peft/error.h"
#include "peft/io.h"
#include "peft/report.h"
#include "test_util.h"

namespace {

struct Tag {
  std::string name;
  std::map<std::string, std::string> attrs;
};

// Minimal XML check: every start tag is closed in order (self-closing allowed); returns the
// start tags seen. Fails the test on an unbalanced document.
std::vector<Tag> parse_xml(const std::string& s) {
  std::vector<Tag> tags;
  std::vector<std::string> stack;
  size_t i = 0;
  while ((i = s.find('<', i)) != std::string::npos) {
    size_t e = s.find('>', i);
    if (e == std::string::npos) {
      ADD_FAILURE() << "unterminated tag at " << i;
      return tags;
    }
    std::string body = s.substr(i + 1, e - i - 1);
    i = e + 1;
    if (body.empty() || body[0] == '?' || body[0] == '!') continue;
    if (body[0] == '/') {
      std::string name = body.substr(1);
      if (stack.empty() || stack.back() != name) {
        ADD_FAILURE() << "unbalanced </" << name << ">";
        return tags;
      }
      stack.pop_back();
      continue;
    }
    bool self = body.back() == '/';
    if (self) body.pop_back();
    Tag t;
    size_t sp = body.find_first_of(" \n");
    t.name = body.substr(0, sp);
    while (sp != std::string::npos) {
      size_t eq = body.find('=', sp);
      if (eq == std::string::npos) break;
      std::string key = body.substr(sp + 1, eq - sp - 1);
      key.erase(0, key.find_first_not_of(" \n"));
      size_t q1 = body.find('"', eq), q2 = body.find('"', q1 + 1);
      t.attrs[key] = body.substr(q1 + 1, q2 - q1 - 1);
      sp = q2 + 1 < body.size() ? q2 + 1 : std::string::npos;
    }
    if (!self) stack.push_back(t.name);
    tags.push_back(std::move(t));
  }
  EXPECT_TRUE(stack.empty()) << "unclosed <" << (stack.empty() ? "" : stack.back()) << ">";
  return tags;
}

size_t count_points(const std::string& points) {
  std::istringstream is(points);
  std::string p;
  size_t n = 0;
  while (is >> p) {
    EXPECT_NE(p.find(','), std::string::npos) << p;
    ++n;
  }
  return n;
}

}  // namespace

TEST(Report, SvgIsWellFormedWithOnePolylinePointPerRecord) {
  std::vector<nlohmann::json> recs;
  for (int s = 1; s <= 25; ++s) recs.push_back({{"step", s}, {"loss", 3.0 / s}, {"lr", 1e-3}});
  for (int s = 5; s <= 25; s += 5) recs.push_back({{"step", s}, {"eval_loss", 3.5 / s}, {"eval_bleu", 2.0 * s}});
  recs.push_back({{"note", "no step: ignored"}});
  std::string dir = peft::test::temp_dir("report") + "/out";
  std::string svg = peft::write_training_report(dir, recs, "Run <1>");
  EXPECT_EQ(peft::read_file(dir + "/report.svg"), svg);
  auto tags = parse_xml(svg);
  ASSERT_FALSE(tags.empty());
  EXPECT_EQ(tags[0].name, "svg");
  std::map<std::string, size_t> points;
  for (auto& t : tags)
    if (t.name == "polyline") points[t.attrs["data-series"]] = count_points(t.attrs["points"]);
  EXPECT_EQ(points["loss"], 25u);
  EXPECT_EQ(points["eval_loss"], 5u);
  EXPECT_EQ(points["eval_bleu"], 5u);
  EXPECT_EQ(points["lr"], 25u);  // a constant series still plots
  EXPECT_EQ(points.size(), 4u);
  EXPECT_NE(svg.find(">step</text>"), std::string::npos);  // x-axis label
  EXPECT_NE(svg.find("Run &lt;1&gt;"), std::string::npos);   // escaped title
  std::string html = peft::read_file(dir + "/report.html");
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_NE(html.find("<svg"), std::string::npos);
  EXPECT_NE(html.find("<td>eval_bleu</td>"), std::string::npos);
  parse_xml(html.substr(html.find("<html>")));
}

TEST(Report, EmptyRecordsStillWriteAValidReport) {
  std::string dir = peft::test::temp_dir("report_empty");
  std::string svg = peft::write_training_report(dir, {});
  parse_xml(svg);
  EXPECT_NE(svg.find("no metrics logged"), std::string::npos);
}

TEST(JsonlLogger, WritesOneFlushedObjectPerLine) {
  std::string path = peft::test::temp_dir("jsonl") + "/logs/metrics.jsonl";
  {
    peft::JsonlLogger log(path, /*append=*/false);
    log.log({{"step", 1}, {"loss", 2.5}});
    log.log({{"step", 2}, {"loss", 2.25}, {"text", "line\nbreak \"quoted\""}});
    // Readable before the logger closes (flushed).
    std::string bytes = peft::read_file(path);
    EXPECT_EQ(std::count(bytes.begin(), bytes.end(), '\n'), 2);
    EXPECT_THROW(log.log(nlohmann::json::array({1, 2})), peft::Error);
  }
  { peft::JsonlLogger(path).log({{"step", 3}}); }  // appends
  auto recs = peft::read_jsonl(path);
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[1]["text"], "line\nbreak \"quoted\"");
  EXPECT_EQ(recs[2]["step"], 3);
  std::ofstream(path, std::ios::app) << "{broken\n";
  try {
    peft::read_jsonl(path);
    ADD_FAILURE() << "no error";
  } catch (const peft::Error& e) {
    EXPECT_NE(std::string(e.what()).find(path + ":4: invalid JSON"), std::string::npos) << e.what();
  }
  EXPECT_THROW(peft::JsonlLogger("/proc/nonexistent/x.jsonl"), peft::Error);
}

TEST(ProgressBar, LinesEveryNStepsWithoutTty) {
  std::ostringstream os;
  peft::ProgressOptions o;
  o.out = &os;
  o.tty = 0;
  o.every = 2;
  o.width = 10;
  peft::ProgressBar bar(5, o);
  for (int s = 1; s <= 5; ++s) bar.update(s, 1.0 / s, 100);
  bar.finish();
  std::string out = os.str();
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 4) << out;  // steps 1, 2, 4, 5
  EXPECT_EQ(out.find('\r'), std::string::npos);
  EXPECT_NE(out.find("step 4/5 [########--] loss 0.2500"), std::string::npos) << out;
  EXPECT_NE(out.find("tok/s"), std::string::npos);
  EXPECT_NE(out.find("ETA"), std::string::npos);
}

TEST(ProgressBar, RedrawsOnTty) {
  std::ostringstream os;
  peft::ProgressOptions o;
  o.out = &os;
  o.tty = 1;
  peft::ProgressBar bar(3, o);
  for (int s = 1; s <= 3; ++s) bar.update(s, 0.5, 10, "lr 1e-4");
  bar.finish();
  std::string out = os.str();
  EXPECT_EQ(std::count(out.begin(), out.end(), '\r'), 3);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
  EXPECT_NE(out.find("| lr 1e-4"), std::string::npos);
  EXPECT_EQ(peft::ProgressBar::format_duration(3725), "01:02:05");
  EXPECT_EQ(peft::ProgressBar::format_duration(65), "01:05");
  EXPECT_EQ(peft::ProgressBar::format_duration(-1), "--:--");
}
