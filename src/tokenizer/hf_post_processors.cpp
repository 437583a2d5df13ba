// tokenizer.json "post_processor": where special tokens go around sequence A (and B for pairs)
// (tokenizers' processors module: TemplateProcessing, BertProcessing, RobertaProcessing,
// ByteLevel (adds nothing), Sequence: only the first processor that adds tokens applies).
#include <string>
#include <vector>

#include "tokenizer/hf_internal.h"

namespace peft::tok::hf {
namespace {

int64_t pair_id(const json& v, const std::string& path, int64_t vocab) {
  if (!v.is_array() || v.size() != 2 || !v[0].is_string()) bad_field(path, "expected [token, id]");
  int64_t id = get_int(v[1], path + "[1]");
  if (id < 0 || id >= vocab) bad_field(path, "id " + std::to_string(id) + " outside the vocabulary");
  return id;
}

std::vector<TemplatePiece> read_template(const json& t, const json& specials, const std::string& path,
                                         int64_t vocab) {
  std::vector<TemplatePiece> out;
  if (!t.is_array()) bad_field(path, std::string("expected an array, got ") + t.type_name());
  for (size_t i = 0; i < t.size(); ++i) {
    std::string p = path + "[" + std::to_string(i) + "]";
    const json& e = t[i];
    if (has(e, "SpecialToken")) {
      std::string name = get_str(e["SpecialToken"], "id", p + ".SpecialToken");
      int64_t ty = opt_int(e["SpecialToken"], "type_id", p + ".SpecialToken", 0);
      TemplatePiece tp{true, {}, 0, ty};
      if (!specials.is_object() || !specials.contains(name))
        bad_field(p, "special token '" + name + "' is not in special_tokens");
      const json& ids = need_array(specials[name], "ids", path + ".special_tokens." + name);
      for (size_t k = 0; k < ids.size(); ++k) {
        int64_t id = get_int(ids[k], path + ".special_tokens." + name + ".ids");
        if (id < 0 || id >= vocab) bad_field(p, "special token id out of range");
        tp.ids.push_back(id);
      }
      out.push_back(tp);
    } else if (has(e, "Sequence")) {
      std::string sid = get_str(e["Sequence"], "id", p + ".Sequence");
      if (sid != "A" && sid != "B") bad_field(p + ".Sequence.id", "expected A or B");
      out.push_back({false, {}, sid == "A" ? 0 : 1, opt_int(e["Sequence"], "type_id", p + ".Sequence", 0)});
    } else {
      bad_field(p, "expected SpecialToken or Sequence");
    }
  }
  return out;
}

}  // namespace

void PostProcessor::read(const json& j, const std::string& path, int64_t vocab) {
  std::string t = type_of(j, path);
  if (t == "Sequence") {
    const json& a = need_array(j, "processors", path);
    for (size_t i = 0; i < a.size(); ++i) {
      if (active) break;  // only the first processor that adds tokens is applied
      read(a[i], path + ".processors[" + std::to_string(i) + "]", vocab);
    }
    return;
  }
  if (t == "ByteLevel") return;
  if (t == "TemplateProcessing") {
    const json& sp = has(j, "special_tokens") ? j["special_tokens"] : json::object();
    single = read_template(need(j, "single", path), sp, path + ".single", vocab);
    if (has(j, "pair")) pair = read_template(j["pair"], sp, path + ".pair", vocab);
    active = true;
    return;
  }
  if (t == "BertProcessing" || t == "RobertaProcessing") {
    int64_t sep = pair_id(need(j, "sep", path), path + ".sep", vocab);
    int64_t cls = pair_id(need(j, "cls", path), path + ".cls", vocab);
    single = {{true, {cls}, 0, 0}, {false, {}, 0, 0}, {true, {sep}, 0, 0}};
    if (t == "BertProcessing")
      pair = {{true, {cls}, 0, 0}, {false, {}, 0, 0}, {true, {sep}, 0, 0}, {false, {}, 1, 1}, {true, {sep}, 0, 1}};
    else
      pair = {{true, {cls}, 0, 0}, {false, {}, 0, 0}, {true, {sep, sep}, 0, 0}, {false, {}, 1, 0}, {true, {sep}, 0, 0}};
    bert_like = true;
    active = true;
    return;
  }
  bad_field(path + ".type", "unsupported post_processor '" + t + "'");
}

void PostProcessor::apply(const std::vector<TemplatePiece>& tpl, const std::vector<int64_t>& a,
                          const std::vector<int64_t>* b, std::vector<int64_t>& ids,
                          std::vector<int64_t>& types) {
  for (const auto& p : tpl) {
    if (p.special) {
      ids.insert(ids.end(), p.ids.begin(), p.ids.end());
      types.insert(types.end(), p.ids.size(), p.type_id);
    } else {
      const std::vector<int64_t>* s = p.seq == 0 ? &a : b;
      if (!s) continue;
      ids.insert(ids.end(), s->begin(), s->end());
      types.insert(types.end(), s->size(), p.type_id);
    }
  }
}

}  // namespace peft::tok::hf
