// Chat templates: the Jinja subset that tokenizer_config.json's `chat_template` strings use,
// rendered as transformers' apply_chat_template does (jinja2 with trim_blocks and lstrip_blocks;
// variables messages, add_generation_prompt, bos_token, eos_token; raise_exception(msg)).
//
// Supported (docs/SERVE.md): text, {{ expr }}, {# comments #}, whitespace control ({%- -%}),
// {% if / elif / else / endif %}, {% for x in xs %} ... {% else %} {% endfor %} with loop.index,
// index0, first, last, length, revindex, revindex0; {% set x = expr %}, {% set ns.x = expr %}
// with namespace(...); expressions: string / number / true / false / none literals, lists,
// names, .attr, [key], [a:b] slices, + - * / % ~, == != < > <= >=, in / not in, and, or, not,
// `is [not] defined / none / string / number / mapping / sequence / true / false`, inline
// `a if c else b`; filters trim, length, count, upper, lower, string, first, last, tojson;
// string methods strip, lstrip, rstrip, upper, lower, title, startswith, endswith, split, replace;
// mapping .get, .items, .keys, .values.
// Anything else (macros, call blocks, other filters ...) is a ChatTemplateError naming it.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace peft::serve {

struct ChatTemplateError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class ChatTemplate {
 public:
  /// Parses the template; ChatTemplateError when it uses something outside the subset.
  explicit ChatTemplate(const std::string& source);
  ~ChatTemplate();
  /// `messages`: [{"role", "content"}, ...]. Errors (raise_exception, bad types) throw ChatTemplateError.
  std::string render(const nlohmann::json& messages, bool add_generation_prompt, const std::string& bos_token,
                     const std::string& eos_token) const;
  /// Renders with arbitrary top-level variables.
  std::string render(const nlohmann::json& vars) const;

  struct Node;

 private:
  std::shared_ptr<Node> root_;
};

}  // namespace peft::serve
