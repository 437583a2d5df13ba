#include "cli/command.h"

#include <algorithm>

#include "io/suggest.h"
#include "peft/error.h"

namespace peft::cli {

Args::Args(std::vector<std::string> argv) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.size() > 2 && a.rfind("--", 0) == 0) {
      std::string key = a.substr(2), val;
      auto eq = key.find('=');
      if (eq != std::string::npos) {
        val = key.substr(eq + 1);
        key = key.substr(0, eq);
      } else if (i + 1 < argv.size() && argv[i + 1].rfind("--", 0) != 0) {
        val = argv[++i];
      } else {
        val = "true";
      }
      std::replace(key.begin(), key.end(), '-', '_');
      opts_.emplace_back(key, val);
    } else {
      pos_.push_back(a);
    }
  }
}

bool Args::has(const std::string& key) const {
  for (auto& kv : opts_)
    if (kv.first == key) return true;
  return false;
}

std::string Args::get(const std::string& key) const {
  PEFT_CHECK(has(key), "missing required option --", key);
  return get(key, "");
}

std::string Args::get(const std::string& key, const std::string& dflt) const {
  std::string v = dflt;
  for (auto& kv : opts_)
    if (kv.first == key) v = kv.second;
  return v;
}

double Args::get_double(const std::string& key, double dflt) const {
  if (!has(key)) return dflt;
  std::string v = get(key);
  try {
    size_t n = 0;
    double d = std::stod(v, &n);
    PEFT_CHECK(n == v.size(), "");
    return d;
  } catch (...) {
    fail("option --", key, ": expected a number, got '", v, "'");
  }
}

int64_t Args::get_int(const std::string& key, int64_t dflt) const {
  if (!has(key)) return dflt;
  std::string v = get(key);
  try {
    size_t n = 0;
    long long d = std::stoll(v, &n);
    PEFT_CHECK(n == v.size(), "");
    return d;
  } catch (...) {
    fail("option --", key, ": expected an integer, got '", v, "'");
  }
}

bool Args::get_bool(const std::string& key, bool dflt) const {
  if (!has(key)) return dflt;
  std::string v = get(key);
  if (v == "true" || v == "1" || v == "yes") return true;
  if (v == "false" || v == "0" || v == "no") return false;
  fail("option --", key, ": expected true/false, got '", v, "'");
}

std::vector<std::string> Args::get_all(const std::string& key) const {
  std::vector<std::string> out;
  for (auto& kv : opts_)
    if (kv.first == key) out.push_back(kv.second);
  return out;
}

std::string Args::positional(size_t i, const std::string& what) const {
  PEFT_CHECK(i < pos_.size(), "missing argument ", what);
  return pos_[i];
}

void Args::reject_unknown(const std::vector<std::string>& known) const {
  for (auto& kv : opts_)
    PEFT_CHECK(std::find(known.begin(), known.end(), kv.first) != known.end(), "unknown option --",
               kv.first, did_you_mean(kv.first, known, "--"));
}

std::map<std::string, Command>& command_registry() {
  static std::map<std::string, Command> r;
  return r;
}

bool register_command(Command c) {
  auto& r = command_registry();
  TORCH_INTERNAL_ASSERT(!r.count(c.name), "duplicate CLI command ", c.name);
  r[c.name] = std::move(c);
  return true;
}

}  // namespace peft::cli
