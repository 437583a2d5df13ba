// The layering rules of docs/CONTRIBUTING.md, checked on the sources so that they stay true:
//   1. no include from a lower layer to a higher one (and public headers include only peft/*);
//   2. no tuner names a model family;
//   3. no file outside the tuners names a method.
// Today's exceptions are in the allow-lists below, each with its reason; an entry that is no
// longer needed fails too (remove it). RulesCatchPlantedViolations shows each rule can fail.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "peft/model.h"
#include "peft/tuner.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

// ---------------------------------------------------------------------------------------------
// The layers, lowest first. A file may include headers of its own layer and of lower ones.
// Derived from the includes as they are: quant (bitsandbytes formats, src/quant) sits below the
// models (QuantLinear in src/models loads them); dist (process groups, src/dist) needs only
// error.h and is used by train and cli, so it sits between tuners and train. serve (the HTTP
// server) uses models and tuners; cli is the top.
const std::vector<std::string> kLayers = {"error", "io", "tokenizer", "quant", "models", "tuners", "dist", "train", "serve", "cli"};

// Public headers (include/peft/) by the layer that implements them.
const std::map<std::string, std::string> kPublicHeaderLayer = {
    {"peft/error.h", "error"},       {"peft/io.h", "io"},           {"peft/tokenizer.h", "tokenizer"},
    {"peft/quant.h", "quant"},       {"peft/model.h", "models"},    {"peft/module.h", "models"},
    {"peft/generate.h", "models"},   {"peft/precision.h", "models"}, {"peft/tuner.h", "tuners"},
    {"peft/extend/tuner.h", "tuners"}, {"peft/extend/config_fields.h", "tuners"}, {"peft/combine.h", "tuners"},    {"peft/presets.h", "tuners"},  {"peft/lorahub.h", "tuners"},
    {"peft/composition.h", "tuners"}, {"peft/dist.h", "dist"},
    {"peft/data.h", "train"},        {"peft/metrics.h", "train"},   {"peft/report.h", "train"},
    {"peft/trainer.h", "train"},     {"peft/log.h", "io"},          {"peft/peft.h", "train"},
};

// (file, included header) pairs that break rule 1 today.
const std::set<std::pair<std::string, std::string>> kIncludeAllowList = {};

// (file, family) pairs that break rule 2 today.
const std::set<std::pair<std::string, std::string>> kFamilyAllowList = {
    // Python peft's TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING tables, keyed by model_type,
    // so that a config without target_modules resolves as peft resolves it. Data, not logic;
    // issue 18 item 3 moves such facts into the model families.
    {"src/tuners/default_targets.cpp", "bert"},  {"src/tuners/default_targets.cpp", "roberta"},
    {"src/tuners/default_targets.cpp", "gpt2"},  {"src/tuners/default_targets.cpp", "llama"},
    {"src/tuners/default_targets.cpp", "mistral"}, {"src/tuners/default_targets.cpp", "qwen2"},
    {"src/tuners/default_targets.cpp", "t5"},
};

// (file, method name) pairs that break rule 3 today.
const std::set<std::pair<std::string, std::string>> kMethodAllowList = {
    // `peft bench`: its default method list, and the LoRA step it compares with PyTorch's.
    {"src/cli/bench.cpp", "lora"}, {"src/cli/bench.cpp", "dora"}, {"src/cli/bench.cpp", "ia3"},
    {"src/cli/bench.cpp", "vera"}, {"src/cli/bench.cpp", "loha"}, {"src/cli/bench.cpp", "lokr"},
    {"src/cli/bench.cpp", "adalora"}, {"src/cli/bench.cpp", "lst"},
    // The data-parallel bench measures a LoRA step.
    {"src/cli/bench_dist.cpp", "lora"},
    // The multi-adapter bench measures LoRA adapters in a mixed batch against a merged one.
    {"src/cli/bench_multi.cpp", "lora"},
    // `peft train --method` defaults to "lora".
    {"src/cli/train.cpp", "lora"},
};

// ---------------------------------------------------------------------------------------------
struct Source {
  std::string path;  // relative to the repository root, '/'-separated
  std::string text;
};

int rank_of(const std::string& layer) {
  auto it = std::find(kLayers.begin(), kLayers.end(), layer);
  return it == kLayers.end() ? -1 : int(it - kLayers.begin());
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower((unsigned char)c));
  return s;
}

bool is_tuner_file(const std::string& path) {
  return path.rfind("src/tuners/", 0) == 0 ||
         (path.rfind("include/peft/", 0) == 0 && kPublicHeaderLayer.count(path.substr(8)) &&
          kPublicHeaderLayer.at(path.substr(8)) == "tuners");
}

// The layer a source file belongs to; "" when it is not layered (src/pch.h).
std::string layer_of_file(const std::string& path) {
  if (path.rfind("include/", 0) == 0) {
    auto it = kPublicHeaderLayer.find(path.substr(8));
    return it == kPublicHeaderLayer.end() ? "?" : it->second;
  }
  if (path.rfind("src/", 0) == 0) {
    size_t slash = path.find('/', 4);
    if (slash == std::string::npos) return "";
    std::string dir = path.substr(4, slash - 4);
    return rank_of(dir) >= 0 ? dir : "?";
  }
  return "";
}

// The layer of a quoted include: a public header, or "<layer dir>/...".
std::string layer_of_include(const std::string& inc) {
  if (inc.rfind("peft/", 0) == 0) {
    auto it = kPublicHeaderLayer.find(inc);
    return it == kPublicHeaderLayer.end() ? "?" : it->second;
  }
  size_t slash = inc.find('/');
  if (slash == std::string::npos) return "?";
  std::string dir = inc.substr(0, slash);
  return rank_of(dir) >= 0 ? dir : "?";
}

// The code with // and /* */ comments removed; string and character literals kept (a "//"
// inside a string is not a comment), raw strings R"d(...)d" too.
std::string strip_comments(const std::string& s) {
  std::string out;
  size_t i = 0, n = s.size();
  auto ident = [](char c) { return std::isalnum((unsigned char)c) || c == '_'; };
  while (i < n) {
    if (s.compare(i, 2, "//") == 0) {
      size_t e = s.find('\n', i);
      i = e == std::string::npos ? n : e;
    } else if (s.compare(i, 2, "/*") == 0) {
      size_t e = s.find("*/", i + 2);
      out += ' ';
      i = e == std::string::npos ? n : e + 2;
    } else if (s[i] == 'R' && i + 1 < n && s[i + 1] == '"' && (i == 0 || !ident(s[i - 1]))) {
      size_t open = s.find('(', i + 2);
      if (open == std::string::npos) {
        out.append(s, i, std::string::npos);
        break;
      }
      std::string close = ")" + s.substr(i + 2, open - i - 2) + "\"";
      size_t e = s.find(close, open);
      e = e == std::string::npos ? n : e + close.size();
      out.append(s, i, e - i);
      i = e;
    } else if (s[i] == '"' || (s[i] == '\'' && (i == 0 || !std::isxdigit((unsigned char)s[i - 1])))) {
      // (a ' after a hex digit is a digit separator: 1'000)
      char q = s[i];
      size_t j = i + 1;
      while (j < n && s[j] != q && s[j] != '\n') j += s[j] == '\\' ? 2 : 1;
      j = std::min(j + 1, n);
      out.append(s, i, j - i);
      i = j;
    } else {
      out += s[i++];
    }
  }
  return out;
}

// The contents of the ordinary string literals of `code` (comments already stripped), with
// escapes left as written.
std::vector<std::string> string_literals(const std::string& code) {
  std::vector<std::string> out;
  size_t i = 0, n = code.size();
  while (i < n) {
    if (code[i] == '\'' && i + 2 < n) {  // skip character literals such as '"'
      size_t j = i + 1;
      while (j < n && code[j] != '\'' && code[j] != '\n') j += code[j] == '\\' ? 2 : 1;
      i = j + 1;
      continue;
    }
    if (code[i] != '"') {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < n && code[j] != '"' && code[j] != '\n') j += code[j] == '\\' ? 2 : 1;
    out.push_back(code.substr(i + 1, std::min(j, n) - i - 1));
    i = j + 1;
  }
  return out;
}

// Quoted includes of `code` (comments stripped).
std::vector<std::string> quoted_includes(const std::string& code) {
  std::vector<std::string> out;
  std::istringstream in(code);
  for (std::string line; std::getline(in, line);) {
    size_t k = line.find_first_not_of(" \t");
    if (k == std::string::npos || line[k] != '#') continue;
    k = line.find_first_not_of(" \t", k + 1);
    if (k == std::string::npos || line.compare(k, 7, "include") != 0) continue;
    size_t a = line.find('"', k), b = a == std::string::npos ? a : line.find('"', a + 1);
    if (b != std::string::npos) out.push_back(line.substr(a + 1, b - a - 1));
  }
  return out;
}

// Does `name` (lowercase) occur in `code` as a word: starting at the start, after a character
// that is not a letter or digit ('_' separates), or at a lower -> upper case step (isLlama,
// kBertDefaults); and not followed by a lowercase letter (LlamaForCausalLM, GPT2LMHeadModel,
// llama_attn and LLAMA match; "bert" in roberta, "t5" in offset5 do not).
bool names_word(const std::string& code, const std::string& name) {
  const std::string lc = lower(code);
  for (size_t at = 0; (at = lc.find(name, at)) != std::string::npos; ++at) {
    char before = at ? code[at - 1] : ' ';
    bool start = !std::isalnum((unsigned char)before) ||
                 (std::islower((unsigned char)before) && std::isupper((unsigned char)code[at]));
    size_t end = at + name.size();
    bool finish = end >= code.size() || !std::islower((unsigned char)code[end]);
    if (start && finish) return true;
  }
  return false;
}

using Findings = std::vector<std::string>;
template <class Key>
using AllowList = std::set<Key>;

// Rule 1. `used` collects the allow-list entries that excused something.
Findings include_findings(const std::vector<Source>& srcs, const AllowList<std::pair<std::string, std::string>>& allow,
                          std::set<std::pair<std::string, std::string>>* used = nullptr) {
  Findings out;
  for (const auto& s : srcs) {
    std::string layer = layer_of_file(s.path);
    if (layer.empty()) continue;
    if (layer == "?") {
      out.push_back(s.path + ": not in a known layer (add the public header to kPublicHeaderLayer or the "
                             "folder to kLayers)");
      continue;
    }
    for (const auto& inc : quoted_includes(strip_comments(s.text))) {
      std::string to = layer_of_include(inc);
      bool public_header = s.path.rfind("include/", 0) == 0;
      std::string problem;
      if (public_header && inc.rfind("peft/", 0) != 0)
        problem = "a public header includes \"" + inc + "\", which is not installed";
      else if (to == "?")
        problem = "includes \"" + inc + "\", which is in no known layer";
      else if (rank_of(to) > rank_of(layer))
        problem = "(" + layer + ") includes \"" + inc + "\" of the higher layer " + to;
      if (problem.empty()) continue;
      if (allow.count({s.path, inc})) {
        if (used) used->insert({s.path, inc});
        continue;
      }
      out.push_back(s.path + ": " + problem);
    }
  }
  return out;
}

// Rule 2.
Findings family_findings(const std::vector<Source>& srcs, const std::set<std::string>& families,
                         const AllowList<std::pair<std::string, std::string>>& allow,
                         std::set<std::pair<std::string, std::string>>* used = nullptr) {
  Findings out;
  for (const auto& s : srcs) {
    if (!is_tuner_file(s.path)) continue;
    std::string code = strip_comments(s.text);
    for (const auto& f : families) {
      if (!names_word(code, f)) continue;
      if (allow.count({s.path, f})) {
        if (used) used->insert({s.path, f});
        continue;
      }
      out.push_back(s.path + ": a tuner names the model family '" + f + "'");
    }
  }
  return out;
}

// Rule 3: a string literal (outside comments) that is exactly a method name or peft_type, in
// any case. Prose that mentions a method ("--method lora ...") is not a method name.
Findings method_findings(const std::vector<Source>& srcs, const std::set<std::string>& methods,
                         const AllowList<std::pair<std::string, std::string>>& allow,
                         std::set<std::pair<std::string, std::string>>* used = nullptr) {
  Findings out;
  for (const auto& s : srcs) {
    if (is_tuner_file(s.path) || layer_of_file(s.path).empty()) continue;
    std::set<std::string> seen;
    for (const auto& lit : string_literals(strip_comments(s.text))) {
      std::string m = lower(lit);
      if (!methods.count(m) || !seen.insert(m).second) continue;
      if (allow.count({s.path, m})) {
        if (used) used->insert({s.path, m});
        continue;
      }
      out.push_back(s.path + ": names the method \"" + lit + "\" outside src/tuners");
    }
  }
  return out;
}

std::vector<Source> repository_sources() {
  std::vector<Source> out;
  const std::string root = peft::test::source_path("");
  for (const char* top : {"src", "include"}) {
    for (const auto& e : fs::recursive_directory_iterator(root + top)) {
      if (!e.is_regular_file()) continue;
      std::string ext = e.path().extension().string();
      if (ext != ".cpp" && ext != ".h") continue;
      std::ifstream in(e.path(), std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      out.push_back({fs::relative(e.path(), root).generic_string(), ss.str()});
    }
  }
  std::sort(out.begin(), out.end(), [](const Source& a, const Source& b) { return a.path < b.path; });
  return out;
}

// Model families as registered: each architecture minus its task suffix, lowercased
// (LlamaForCausalLM -> llama, GPT2LMHeadModel -> gpt2, T5ForConditionalGeneration -> t5).
std::set<std::string> model_families() {
  std::set<std::string> out;
  for (std::string a : peft::registered_architectures()) {
    for (const char* suffix : {"ForCausalLM", "ForSequenceClassification", "ForConditionalGeneration",
                               "ForTokenClassification", "ForQuestionAnswering", "LMHeadModel", "Model"}) {
      std::string sf = suffix;
      if (a.size() > sf.size() && a.compare(a.size() - sf.size(), sf.size(), sf) == 0) {
        a.resize(a.size() - sf.size());
        break;
      }
    }
    out.insert(lower(a));
  }
  return out;
}

// Method names as registered: method_names() (what users type) and the tuners' peft_types.
std::set<std::string> method_names_registered() {
  std::set<std::string> out;
  for (const auto& m : peft::method_names()) out.insert(lower(m));
  for (const auto& t : peft::registered_tuners()) out.insert(lower(t));
  return out;
}

template <class T>
std::string join(const T& items) {
  std::string s;
  for (const auto& x : items) s += "\n  " + x;
  return s;
}

template <class Pairs>
void expect_no_stale(const Pairs& allow, const Pairs& used, const char* list) {
  for (const auto& e : allow)
    EXPECT_TRUE(used.count(e)) << list << " entry {" << e.first << ", " << e.second
                               << "} excuses nothing any more: remove it";
}

}  // namespace

TEST(LayeringTest, NoIncludeFromALowerLayerToAHigherOne) {
  auto srcs = repository_sources();
  ASSERT_GT(srcs.size(), 100u);
  std::set<std::pair<std::string, std::string>> used;
  Findings f = include_findings(srcs, kIncludeAllowList, &used);
  EXPECT_TRUE(f.empty()) << f.size() << " layering violations:" << join(f);
  expect_no_stale(kIncludeAllowList, used, "kIncludeAllowList");
}

TEST(LayeringTest, NoTunerNamesAModelFamily) {
  std::set<std::string> fams = model_families();
  for (const char* f : {"llama", "gpt2", "bert", "roberta", "t5", "qwen2", "mistral"})
    EXPECT_TRUE(fams.count(f)) << f << " not derived from the model registry";
  std::set<std::pair<std::string, std::string>> used;
  Findings f = family_findings(repository_sources(), fams, kFamilyAllowList, &used);
  EXPECT_TRUE(f.empty()) << f.size() << " violations:" << join(f);
  expect_no_stale(kFamilyAllowList, used, "kFamilyAllowList");
}

TEST(LayeringTest, NoFileOutsideTunersNamesAMethod) {
  std::set<std::string> methods = method_names_registered();
  for (const char* m : {"lora", "ia3", "prefix-tuning", "prefix_tuning", "adalora", "lt_sft"})
    EXPECT_TRUE(methods.count(m)) << m << " not in the method registry";
  std::set<std::pair<std::string, std::string>> used;
  Findings f = method_findings(repository_sources(), methods, kMethodAllowList, &used);
  EXPECT_TRUE(f.empty()) << f.size() << " violations:" << join(f);
  expect_no_stale(kMethodAllowList, used, "kMethodAllowList");
}

// Each rule on planted files: it reports the violation, and not the look-alikes beside it.
TEST(LayeringTest, RulesCatchPlantedViolations) {
  const AllowList<std::pair<std::string, std::string>> none;
  {
    std::vector<Source> s = {
        {"src/models/planted.cpp", "#include \"peft/model.h\"\n#include \"io/files.h\"\n  #  include \"peft/trainer.h\"\n"
                                   "// #include \"cli/command.h\"  (a comment)\nconst char* x = \"#include \\\"cli/a.h\\\"\";\n"},
        {"include/peft/tuner.h", "#include \"peft/model.h\"\n#include \"tuners/shared.h\"\n"},
        {"src/tokenizer/planted.cpp", "#include \"nowhere/x.h\"\n"},
        {"src/web/planted.cpp", "int x;\n"},
        {"src/pch.h", "#include \"cli/command.h\"\n"},
    };
    Findings f = include_findings(s, none);
    ASSERT_EQ(f.size(), 4u) << join(f);
    EXPECT_NE(f[0].find("src/models/planted.cpp: (models) includes \"peft/trainer.h\" of the higher layer train"), std::string::npos) << f[0];
    EXPECT_NE(f[1].find("not installed"), std::string::npos) << f[1];
    EXPECT_NE(f[2].find("in no known layer"), std::string::npos) << f[2];
    EXPECT_NE(f[3].find("src/web/planted.cpp: not in a known layer"), std::string::npos) << f[3];
    EXPECT_TRUE(include_findings(s, {{"src/models/planted.cpp", "peft/trainer.h"}, {"include/peft/tuner.h", "tuners/shared.h"},
                                     {"src/tokenizer/planted.cpp", "nowhere/x.h"}}).size() == 1u);
  }
  {
    const std::set<std::string> fams = {"llama", "bert", "t5", "gpt2"};
    std::vector<Source> s = {
        {"src/tuners/planted.cpp", "// a llama comment, /* BERT */\nint offset5 = 0; bool roberta_like; auto a = \"Bertram\";\n"
                                   "if (arch == \"LlamaForCausalLM\") {}\n"},
        {"src/tuners/planted2.cpp", "bool isGpt2 = kT5;\n"},
        {"include/peft/combine.h", "int bert_dim;\n"},
        {"src/models/llama.cpp", "struct LlamaBlock {};\n"},  // models may name themselves
    };
    Findings f = family_findings(s, fams, none);
    ASSERT_EQ(f.size(), 4u) << join(f);
    EXPECT_NE(f[0].find("src/tuners/planted.cpp: a tuner names the model family 'llama'"), std::string::npos) << f[0];
    EXPECT_NE(f[1].find("planted2.cpp: a tuner names the model family 'gpt2'"), std::string::npos) << f[1];
    EXPECT_NE(f[2].find("planted2.cpp: a tuner names the model family 't5'"), std::string::npos) << f[2];
    EXPECT_NE(f[3].find("include/peft/combine.h: a tuner names the model family 'bert'"), std::string::npos) << f[3];
    EXPECT_TRUE(names_word("kT5", "t5"));
    EXPECT_FALSE(names_word("offset5 roberta Bertram", "bert"));
    EXPECT_FALSE(names_word("offset5", "t5"));
  }
  {
    const std::set<std::string> methods = {"lora", "ia3", "prefix_tuning"};
    std::vector<Source> s = {
        {"src/train/planted.cpp", "// if (m == \"lora\")\nstd::string h = \"--method lora\"; char q = '\"';\n"
                                  "if (cfg[\"peft_type\"] == \"PREFIX_TUNING\") {}\nauto k = \"lora_alpha\";\n"},
        {"src/tuners/planted.cpp", "if (m == \"lora\") {}\n"},  // the tuners may
        {"src/cli/planted.cpp", "auto m = \"IA3\";\n"},
    };
    Findings f = method_findings(s, methods, none);
    ASSERT_EQ(f.size(), 2u) << join(f);
    EXPECT_NE(f[0].find("src/train/planted.cpp: names the method \"PREFIX_TUNING\""), std::string::npos) << f[0];
    EXPECT_NE(f[1].find("src/cli/planted.cpp: names the method \"IA3\""), std::string::npos) << f[1];
    std::set<std::pair<std::string, std::string>> used;
    EXPECT_EQ(method_findings(s, methods, {{"src/cli/planted.cpp", "ia3"}}, &used).size(), 1u);
    EXPECT_EQ(used.size(), 1u);
  }
}

// The comment stripper keeps strings (a "//" in a URL is not a comment) and raw strings.
TEST(LayeringTest, CommentStripperKeepsStrings) {
  EXPECT_EQ(strip_comments("a // b\nc /* d */ e"), "a \nc   e");
  EXPECT_EQ(strip_comments("s = \"http://x\"; // y"), "s = \"http://x\"; ");
  EXPECT_EQ(strip_comments("r = R\"(/* no */)\"; x"), "r = R\"(/* no */)\"; x");
  EXPECT_EQ(strip_comments("c = '\"'; // z"), "c = '\"'; ");
  EXPECT_EQ(string_literals("f(\"a\\\"b\", 'x', \"c\")"), (std::vector<std::string>{"a\\\"b", "c"}));
}
