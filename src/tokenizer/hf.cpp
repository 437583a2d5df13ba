// Hugging Face tokenizer.json: the reader that assembles the components (hf_internal.h: one
// file per tokenizers module: normalizers, pre-tokenizers, models, decoders, post-processors),
// plus added (special) tokens, the special ids and tokenizer_config.json's add_bos/add_eos.
#include <algorithm>
#include <cctype>
#include <unordered_map>

#include "tokenizer/hf_internal.h"
#include "tokenizer/unicode.h"

namespace peft::tok {
namespace {

using namespace hf;

struct AddedToken {
  std::string content;
  int64_t id;
  bool special, lstrip, rstrip;
};

class HfTokenizer : public Tokenizer {
 public:
  HfTokenizer(const json& j, const std::string& where, const SpecialConfig& cfg) {
    if (!j.is_object()) fail("expected a JSON object at the top level");
    const json& m = need(j, "model", "");
    model_ = make_model(m);
    if (has(j, "normalizer")) normalizer_ = make_normalizer(j["normalizer"], "normalizer");
    if (has(j, "pre_tokenizer")) pretok_ = make_pretok(j["pre_tokenizer"], "pre_tokenizer");
    if (has(j, "decoder")) decoder_ = make_decoder(j["decoder"], "decoder");
    if (has(j, "added_tokens")) {
      const json& a = need_array(j, "added_tokens", "");
      for (size_t i = 0; i < a.size(); ++i) {
        std::string p = "added_tokens[" + std::to_string(i) + "]";
        AddedToken t;
        t.content = get_str(a[i], "content", p);
        check_utf8(t.content, p + ".content");
        if (t.content.empty()) bad_field(p + ".content", "empty");
        t.id = get_int(need(a[i], "id", p), p + ".id");
        if (t.id < 0 || t.id > 100000000) bad_field(p + ".id", "out of range");
        t.special = opt_bool(a[i], "special", p, false);
        t.lstrip = opt_bool(a[i], "lstrip", p, false);
        t.rstrip = opt_bool(a[i], "rstrip", p, false);
        added_.push_back(t);
        added_by_id_[t.id] = added_.size() - 1;
        added_by_content_[t.content] = t.id;
        if (t.special) special_ids_.push_back(t.id);
      }
      std::sort(special_ids_.begin(), special_ids_.end());
      // Longest first so that matching prefers the longest added token.
      added_sorted_ = added_;
      std::stable_sort(added_sorted_.begin(), added_sorted_.end(),
                       [](const AddedToken& x, const AddedToken& y) { return x.content.size() > y.content.size(); });
    }
    vocab_ = int64_t(model_->id_to_tok.size());
    for (auto& t : added_) vocab_ = std::max(vocab_, t.id + 1);
    if (has(j, "post_processor")) post_.read(j["post_processor"], "post_processor", vocab_);
    // Special ids.
    unk_id = model_->unk;
    auto first_of = [&](std::initializer_list<const char*> names) -> int64_t {
      for (const char* n : names) {
        int64_t id = token_to_id(n);
        if (id >= 0) return id;
      }
      return -1;
    };
    if (!post_.single.empty() && post_.single.front().special && post_.single.front().ids.size() == 1) bos_id = post_.single.front().ids[0];
    if (!post_.single.empty() && post_.single.back().special && post_.single.back().ids.size() == 1) eos_id = post_.single.back().ids[0];
    if (bos_id < 0) bos_id = first_of({"<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>"});
    if (eos_id < 0) eos_id = first_of({"</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>"});
    pad_id = first_of({"<pad>", "[PAD]", "<|pad|>"});
    if (unk_id < 0) unk_id = first_of({"<unk>", "[UNK]"});
    apply_special_config(*this, cfg);
    // tokenizer_config add_bos_token / add_eos_token override a Llama-style template.
    if ((cfg.add_bos || cfg.add_eos) && !post_.bert_like) {
      bool ab = cfg.add_bos.value_or(!post_.single.empty() && post_.single.front().special);
      bool ae = cfg.add_eos.value_or(!post_.single.empty() && post_.single.back().special && post_.single.size() > 1);
      post_.single.clear();
      post_.pair.clear();
      if (ab && bos_id >= 0) post_.single.push_back({true, {bos_id}, 0, 0});
      post_.single.push_back({false, {}, 0, 0});
      if (ae && eos_id >= 0) post_.single.push_back({true, {eos_id}, 0, 0});
      post_.pair = post_.single;
      for (auto p : post_.single) {
        p.seq = p.special ? 0 : 1;
        p.type_id = 1;
        post_.pair.push_back(p);
      }
      post_.active = true;
    }
    (void)where;
  }

  int64_t vocab_size() const override { return vocab_; }

  std::string id_to_token(int64_t id) const override {
    check_id(id, vocab_, "id_to_token");
    auto it = added_by_id_.find(id);
    if (it != added_by_id_.end()) return added_[it->second].content;
    if (size_t(id) < model_->id_to_tok.size()) return model_->id_to_tok[size_t(id)];
    return "";
  }
  int64_t token_to_id(const std::string& tok) const override {
    auto it = added_by_content_.find(tok);
    if (it != added_by_content_.end()) return it->second;
    return model_->find(tok);
  }

  std::vector<int64_t> encode(const std::string& text, bool add_special) const override {
    std::vector<int64_t> a = encode_raw(text);
    if (!add_special || !post_.active) return a;
    std::vector<int64_t> ids, types;
    PostProcessor::apply(post_.single, a, nullptr, ids, types);
    return ids;
  }

  std::vector<int64_t> encode_pair(const std::string& sa, const std::string& sb,
                                   std::vector<int64_t>* token_type_ids) const override {
    std::vector<int64_t> a = encode_raw(sa), b = encode_raw(sb), ids, types;
    if (post_.active && !post_.pair.empty()) {
      PostProcessor::apply(post_.pair, a, &b, ids, types);
    } else {
      ids = a;
      types.assign(a.size(), 0);
      ids.insert(ids.end(), b.begin(), b.end());
      types.insert(types.end(), b.size(), 1);
    }
    if (token_type_ids) *token_type_ids = types;
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const override {
    std::vector<std::string> toks;
    for (int64_t id : ids) {
      check_id(id, vocab_);
      if (skip_special && std::binary_search(special_ids_.begin(), special_ids_.end(), id)) continue;
      toks.push_back(id_to_token(id));
    }
    if (decoder_) decoder_(toks);
    std::string out;
    for (auto& t : toks) out += t;
    return out;
  }

 private:
  std::vector<int64_t> encode_raw(const std::string& text) const {
    size_t bad = utf8_invalid_at(text);
    PEFT_CHECK(bad == std::string::npos, "encode: invalid UTF-8 in input text at byte ", bad);
    std::vector<int64_t> out;
    // Split around added tokens (longest match at the leftmost position).
    size_t seg_start = 0, i = 0;
    std::string pending;
    auto flush_text = [&](size_t end, bool rstrip_prev, bool lstrip_next) {
      size_t b = seg_start, e = end;
      if (rstrip_prev)
        while (b < e && std::isspace((unsigned char)text[b])) ++b;
      if (lstrip_next)
        while (e > b && std::isspace((unsigned char)text[e - 1])) --e;
      if (e > b) encode_segment(text.substr(b, e - b), b == 0, out);
    };
    bool rstrip_prev = false;
    while (i < text.size() && !added_sorted_.empty()) {
      const AddedToken* hit = nullptr;
      for (const auto& t : added_sorted_)
        if (text.compare(i, t.content.size(), t.content) == 0) {
          hit = &t;
          break;
        }
      if (!hit) {
        ++i;
        continue;
      }
      flush_text(i, rstrip_prev, hit->lstrip);
      out.push_back(hit->id);
      rstrip_prev = hit->rstrip;
      i += hit->content.size();
      seg_start = i;
    }
    flush_text(text.size(), rstrip_prev, false);
    return out;
  }

  void encode_segment(const std::string& s, bool first, std::vector<int64_t>& out) const {
    std::string norm = normalizer_ ? normalizer_(s) : s;
    std::vector<std::string> words{norm};
    if (pretok_) pretok_(words, first);
    for (const auto& w : words)
      if (!w.empty()) model_->tokenize(w, out);
  }

  std::unique_ptr<Model> model_;
  Normalizer normalizer_;
  PreTok pretok_;
  Decoder decoder_;
  std::vector<AddedToken> added_, added_sorted_;
  std::unordered_map<int64_t, size_t> added_by_id_;
  std::unordered_map<std::string, int64_t> added_by_content_;
  std::vector<int64_t> special_ids_;
  PostProcessor post_;
  int64_t vocab_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> make_hf(const json& j, const std::string& where, const SpecialConfig& cfg) {
  return with_context(where, [&]() -> std::unique_ptr<Tokenizer> {
    auto t = std::make_unique<HfTokenizer>(j, where, cfg);
    if (hf::has(j, "added_tokens") && t->vocab_size() == 0) fail("empty vocabulary");
    return t;
  });
}

}  // namespace peft::tok
