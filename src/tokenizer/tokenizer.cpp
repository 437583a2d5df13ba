// Loading (file-type dispatch, special-token config), shared helpers, StreamDecoder.
#include "peft/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tokenizer/internal.h"
#include "tokenizer/unicode.h"

namespace fs = std::filesystem;

namespace peft {

std::vector<int64_t> Tokenizer::encode_pair(const std::string&, const std::string&,
                                            std::vector<int64_t>*) const {
  fail("encode_pair: sentence pairs are not supported by this tokenizer");
}

namespace tok {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  PEFT_CHECK(f.good(), path, ": cannot open file");
  std::ostringstream ss;
  ss << f.rdbuf();
  PEFT_CHECK(!f.bad(), path, ": read error");
  return ss.str();
}

json read_json(const std::string& path) {
  std::string s = read_file(path);
  try {
    return json::parse(s);
  } catch (const std::exception& e) {
    fail(path, ": invalid JSON: ", e.what());
  }
}

void check_id(int64_t id, int64_t vocab, const char* what) {
  PEFT_CHECK(id >= 0 && id < vocab, what, ": token id ", id, " out of range [0, ", vocab, ")");
}

namespace {
std::optional<std::string> token_string(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string())
    return v["content"].get<std::string>();
  return std::nullopt;
}
std::optional<int64_t> token_int(const json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return v[0].get<int64_t>();
  return std::nullopt;
}
}  // namespace

SpecialConfig load_special_config(const std::string& dir) {
  SpecialConfig c;
  if (dir.empty()) return c;
  auto read_tokens = [&](const std::string& file) {
    fs::path p = fs::path(dir) / file;
    if (!fs::is_regular_file(p)) return;
    json j = read_json(p.string());
    if (!j.is_object()) fail(p.string(), ": expected a JSON object");
    auto tok = [&](const char* key, std::optional<std::string>& dst) {
      if (j.contains(key))
        if (auto s = token_string(j[key])) dst = *s;
    };
    tok("bos_token", c.bos_token);
    tok("eos_token", c.eos_token);
    tok("pad_token", c.pad_token);
    tok("unk_token", c.unk_token);
    if (file == "tokenizer_config.json") {
      if (j.contains("add_bos_token") && j["add_bos_token"].is_boolean()) c.add_bos = j["add_bos_token"].get<bool>();
      if (j.contains("add_eos_token") && j["add_eos_token"].is_boolean()) c.add_eos = j["add_eos_token"].get<bool>();
      if (j.contains("do_lower_case") && j["do_lower_case"].is_boolean())
        c.do_lower_case = j["do_lower_case"].get<bool>();
      if (j.contains("chat_template")) {
        const json& t = j["chat_template"];
        if (t.is_string()) {
          c.chat_template = t.get<std::string>();
        } else if (t.is_array()) {  // [{"name": "default", "template": ...}, ...]
          for (const auto& e : t)
            if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
                e["template"].is_string())
              c.chat_template = e["template"].get<std::string>();
        }
      }
    }
  };
  // special_tokens_map.json first, tokenizer_config.json overrides it.
  read_tokens("special_tokens_map.json");
  read_tokens("tokenizer_config.json");
  fs::path cp = fs::path(dir) / "config.json";
  if (fs::is_regular_file(cp)) {
    json j = read_json(cp.string());
    if (j.is_object()) {
      if (j.contains("bos_token_id")) c.bos_id = token_int(j["bos_token_id"]);
      if (j.contains("eos_token_id")) c.eos_id = token_int(j["eos_token_id"]);
      if (j.contains("pad_token_id")) c.pad_id = token_int(j["pad_token_id"]);
    }
  }
  if (c.chat_template.empty()) {
    fs::path jt = fs::path(dir) / "chat_template.jinja";
    if (fs::is_regular_file(jt)) c.chat_template = read_file(jt.string());
  }
  return c;
}

void apply_special_config(Tokenizer& t, const SpecialConfig& cfg) {
  int64_t n = t.vocab_size();
  auto set = [&](int64_t& dst, const std::optional<std::string>& name, const std::optional<int64_t>& id) {
    if (name) {
      int64_t v = t.token_to_id(*name);
      if (v >= 0) {
        dst = v;
        return;
      }
    }
    if (id && *id >= 0 && *id < n) dst = *id;
  };
  set(t.bos_id, cfg.bos_token, cfg.bos_id);
  set(t.eos_id, cfg.eos_token, cfg.eos_id);
  set(t.pad_id, cfg.pad_token, cfg.pad_id);
  set(t.unk_id, cfg.unk_token, std::nullopt);
  if (!cfg.chat_template.empty()) t.chat_template = cfg.chat_template;
}

}  // namespace tok

using namespace tok;

std::unique_ptr<Tokenizer> load_tokenizer_file(const std::string& path) {
  return with_context(path, [&]() -> std::unique_ptr<Tokenizer> {
    PEFT_CHECK(fs::is_regular_file(path), "no such file");
    fs::path p(path);
    std::string dir = p.parent_path().string();
    if (dir.empty()) dir = ".";
    std::string name = p.filename().string();
    std::string ext = p.extension().string();
    SpecialConfig cfg = load_special_config(dir);
    if (ext == ".bin") return make_llama2c(path, cfg);
    if (ext == ".model") return make_sentencepiece(path, cfg);
    if (ext == ".txt") {
      bool lower = cfg.do_lower_case.value_or(true);
      return make_hf(bert_vocab_to_json(path, lower), path, cfg);
    }
    if (ext == ".json") {
      if (name == "vocab.json" || name.find("vocab") != std::string::npos) {
        fs::path merges = p.parent_path() / "merges.txt";
        PEFT_CHECK(fs::is_regular_file(merges), "a GPT-2 vocab.json needs merges.txt beside it (",
                   merges.string(), " not found)");
        return make_hf(gpt2_files_to_json(path, merges.string()), path, cfg);
      }
      return make_hf(read_json(path), path, cfg);
    }
    fail("unknown tokenizer file type (expected tokenizer.json, *.model, vocab.json, vocab.txt or llama2.c *.bin)");
  });
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  if (fs::is_regular_file(dir)) return load_tokenizer_file(dir);
  PEFT_CHECK(fs::is_directory(dir), dir, ": no such directory");
  fs::path d(dir);
  auto has = [&](const char* f) { return fs::is_regular_file(d / f); };
  if (has("tokenizer.json")) return load_tokenizer_file((d / "tokenizer.json").string());
  if (has("tokenizer.model")) return load_tokenizer_file((d / "tokenizer.model").string());
  std::vector<std::string> models, bins;
  for (const auto& e : fs::directory_iterator(d)) {
    if (!e.is_regular_file()) continue;
    std::string n = e.path().filename().string();
    if (n.rfind("tok", 0) == 0 && e.path().extension() == ".model") models.push_back(e.path().string());
    if (n.rfind("tok", 0) == 0 && e.path().extension() == ".bin") bins.push_back(e.path().string());
  }
  std::sort(models.begin(), models.end());
  std::sort(bins.begin(), bins.end());
  if (!models.empty()) return load_tokenizer_file(models.front());
  if (has("vocab.json")) return load_tokenizer_file((d / "vocab.json").string());
  if (has("vocab.txt")) return load_tokenizer_file((d / "vocab.txt").string());
  if (has("tokenizer.bin")) return load_tokenizer_file((d / "tokenizer.bin").string());
  if (!bins.empty()) return load_tokenizer_file(bins.front());
  fail(dir, ": no tokenizer found (looked for tokenizer.json, tokenizer.model, tok*.model, "
            "vocab.json+merges.txt, vocab.txt, tokenizer.bin, tok*.bin)");
}

namespace {
// How much of a context decides how the next piece decodes: the decoders look at most at the
// previous token (BOS or not) and whether text precedes; a few tokens cover byte-fallback runs.
constexpr size_t kContextTail = 8;
}  // namespace

StreamDecoder::StreamDecoder(const Tokenizer& t, const std::vector<int64_t>& context) : tok_(t) {
  size_t from = context.size() > kContextTail ? context.size() - kContextTail : 0;
  ids_.assign(context.begin() + static_cast<std::ptrdiff_t>(from), context.end());
  read_ = ids_.size();
}

std::string decode_continuation(const Tokenizer& t, const std::vector<int64_t>& context,
                                const std::vector<int64_t>& ids) {
  if (context.empty()) return t.decode(ids, true);
  std::string before = t.decode(context, true), all;
  std::vector<int64_t> joined = context;
  joined.insert(joined.end(), ids.begin(), ids.end());
  all = t.decode(joined, true);
  if (all.compare(0, before.size(), before) == 0) return all.substr(before.size());
  return t.decode(ids, true);  // decoders disagreed on the context (rare): the ids alone
}

std::string StreamDecoder::push(int64_t id) {
  ids_.push_back(id);
  std::vector<int64_t> prefix_ids(ids_.begin() + prefix_, ids_.begin() + read_);
  std::vector<int64_t> all_ids(ids_.begin() + prefix_, ids_.end());
  std::string prefix_text = prefix_ids.empty() ? std::string() : tok_.decode(prefix_ids, true);
  std::string new_text = tok_.decode(all_ids, true);
  if (new_text.size() <= prefix_text.size()) return {};
  // Hold back while the tail is an incomplete UTF-8 sequence or a replacement character
  // (an unfinished byte-fallback sequence).
  if (utf8_incomplete_tail(new_text) > 0) return {};
  static const std::string kRepl = "\xEF\xBF\xBD";
  if (new_text.size() >= 3 && new_text.compare(new_text.size() - 3, 3, kRepl) == 0) return {};
  std::string out;
  if (new_text.compare(0, prefix_text.size(), prefix_text) == 0)
    out = new_text.substr(prefix_text.size());
  else
    out = new_text;  // decoders disagreed on the prefix (rare): emit what is new as a whole
  prefix_ = read_;
  read_ = ids_.size();
  return out;
}

}  // namespace peft
