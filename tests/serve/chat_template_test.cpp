// The chat-template subset (serve/chat_template.h) on the forms tokenizer_config.json files use:
// ChatML, Llama 2's (system folding, alternation check with raise_exception, strip), jinja2's
// whitespace rules (trim_blocks, lstrip_blocks, '-'), namespace(). Expected strings are written
// out by hand from jinja2's semantics.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "serve/chat_template.h"

using json = nlohmann::json;
using peft::serve::ChatTemplate;
using peft::serve::ChatTemplateError;

namespace {
json msgs(std::initializer_list<std::pair<const char*, const char*>> m) {
  json out = json::array();
  for (auto& [r, c] : m) out.push_back({{"role", r}, {"content", c}});
  return out;
}
}  // namespace

TEST(ServeChatTemplate, ChatML) {
  ChatTemplate t(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
      "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}");
  EXPECT_EQ(t.render(msgs({{"system", "S"}, {"user", "U"}}), true, "<s>", "</s>"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render(msgs({{"user", "U"}}), false, "", ""), "<|im_start|>user\nU<|im_end|>\n");
}

TEST(ServeChatTemplate, Llama2SystemFoldingAndAlternation) {
  ChatTemplate t(
      "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
      "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
      "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
      "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
      "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
      "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
      "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
      "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}");
  EXPECT_EQ(t.render(msgs({{"system", "S"}, {"user", " U1 "}, {"assistant", "A1"}, {"user", "U2"}}), true, "<s>", "</s>"),
            "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\n U1 [/INST] A1 </s><s>[INST] U2 [/INST]");  // strip() is outside only
  EXPECT_EQ(t.render(msgs({{"user", "Hi"}}), true, "<s>", "</s>"), "<s>[INST] Hi [/INST]");
  try {
    t.render(msgs({{"user", "a"}, {"user", "b"}}), true, "<s>", "</s>");
    FAIL() << "no error";
  } catch (const ChatTemplateError& e) {
    EXPECT_STREQ(e.what(), "Conversation roles must alternate user/assistant/user/assistant/...");
  }
}

TEST(ServeChatTemplate, WhitespaceRulesOfTransformersJinja) {
  // trim_blocks drops the newline after a block tag; '-' strips around a tag; lstrip_blocks drops
  // the indentation before a block tag.
  ChatTemplate t("{% for m in messages %}\n  {{- m.content }}\n  {% endfor %}\n{#- a comment -#}\nEND");
  EXPECT_EQ(t.render(msgs({{"user", "a"}, {"assistant", "b"}}), false, "", ""), "a\nb\nEND");
  ChatTemplate keep("X  {{ 'y' }}  Z");  // expressions keep their surroundings
  EXPECT_EQ(keep.render(json::object()), "X  y  Z");
}

TEST(ServeChatTemplate, NamespacesTestsFiltersAndLoopVariables) {
  ChatTemplate t(
      "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% if m.role == 'system' %}"
      "{% set ns.found = true %}{% endif %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.found }} {{ ns.n }} "
      "{{ messages | length }} {{ messages[-1].content | upper }} {% for m in messages %}{{ loop.index }}"
      "{{ '/' if not loop.last else '.' }}{% endfor %} {{ 'yes' if tools is defined else 'no' }} "
      "{{ 'x' in 'axb' }} {{ 'sys' ~ 1 }} {{ (messages | first).role }} {{ 'a,b' .split(',') | last }}");
  EXPECT_EQ(t.render(json{{"messages", msgs({{"system", "s"}, {"user", "hi"}})}}), "True 2 2 HI 1/2. no True sys1 system b");
}

TEST(ServeChatTemplate, UnsupportedConstructsAreNamed) {
  auto message = [](const std::string& src) {
    try {
      ChatTemplate t(src);
      t.render(json{{"messages", msgs({{"user", "u"}})}});
    } catch (const ChatTemplateError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("{% macro m() %}x{% endmacro %}").find("macro"), std::string::npos);
  EXPECT_NE(message("{{ messages | shuffle }}").find("shuffle"), std::string::npos);
  EXPECT_NE(message("{% for m in messages %}").find("endfor"), std::string::npos);
  EXPECT_NE(message("{{ foo(1) }}").find("foo"), std::string::npos);
  EXPECT_NE(message("{{ 'a' ").find("unclosed"), std::string::npos);
  // A tag that is only a whitespace marker ('-' opening, nothing else) is an empty statement or
  // expression, an error as in jinja2; the one '-' must not also count as the closing marker
  // (a fuzzer found that reading it twice asked for a 2^64-byte string).
  EXPECT_NE(message("x {%-%} y").find("expected"), std::string::npos) << message("x {%-%} y");
  EXPECT_NE(message("x {{-}} y").find("expected"), std::string::npos) << message("x {{-}} y");
  EXPECT_EQ(ChatTemplate("x {#-#} y").render(json::object()), "x y");  // an empty comment is fine
  // Number literals beyond a 64-bit integer or a double are refused, not a std::out_of_range
  // (a fuzzer's 60-digit literal; the server answered 500).
  EXPECT_NE(message("{{ " + std::string(60, '6') + " }}").find("out of range"), std::string::npos);
  EXPECT_NE(message("{{ 1" + std::string(400, '0') + ".5 }}").find("out of range"), std::string::npos);
  EXPECT_EQ(ChatTemplate("{{ 9223372036854775807 }}").render(json::object()), "9223372036854775807");
}
