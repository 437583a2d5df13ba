#include "serve/openai_api.h"

#include <random>
#include <set>

#include "serve/chat_template.h"

namespace peft::serve {

using json = nlohmann::json;

ApiError::ApiError(int status_, std::string message, std::string param_, std::string code_, std::string type_)
    : std::runtime_error(std::move(message)),
      status(status_),
      type(std::move(type_)),
      param(std::move(param_)),
      code(std::move(code_)) {}

json error_body(const ApiError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

json parse_body(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw ApiError(400, std::string("The request body is not valid JSON: ") + e.what(), "", "invalid_json");
  }
  if (!j.is_object()) throw ApiError(400, "The request body must be a JSON object, got " + std::string(j.type_name()));
  return j;
}

namespace {

std::string type_of(const json& v) { return v.type_name(); }

[[noreturn]] void bad(const std::string& field, const std::string& what) {
  throw ApiError(400, "'" + field + "': " + what, field);
}

bool present(const json& b, const char* k) { return b.contains(k) && !b[k].is_null(); }

double number_field(const json& b, const char* k, double dflt, double lo, double hi, bool lo_open = false) {
  if (!present(b, k)) return dflt;
  if (!b[k].is_number()) bad(k, "must be a number, got " + type_of(b[k]));
  double v = b[k].get<double>();
  if (v < lo || v > hi || (lo_open && v == lo))
    bad(k, "must lie in " + std::string(lo_open ? "(" : "[") + std::to_string(lo) + ", " + std::to_string(hi) +
               "], got " + b[k].dump());
  return v;
}

int64_t int_field(const json& b, const char* k, int64_t dflt) {
  if (!present(b, k)) return dflt;
  if (!b[k].is_number_integer()) bad(k, "must be an integer, got " + b[k].dump());
  return b[k].get<int64_t>();
}

bool bool_field(const json& b, const char* k, bool dflt) {
  if (!present(b, k)) return dflt;
  if (!b[k].is_boolean()) bad(k, "must be a boolean, got " + type_of(b[k]));
  return b[k].get<bool>();
}

// Fields that would change what is generated and are not implemented: refused unless neutral.
void refuse_unsupported(const json& b) {
  for (const char* k : {"presence_penalty", "frequency_penalty"})
    if (present(b, k) && !(b[k].is_number() && b[k].get<double>() == 0)) bad(k, "is not supported (only 0)");
  if (present(b, "repetition_penalty") && !(b["repetition_penalty"].is_number() && b["repetition_penalty"].get<double>() == 1))
    bad("repetition_penalty", "is not supported (only 1)");
  if (present(b, "logit_bias") && !(b["logit_bias"].is_object() && b["logit_bias"].empty()))
    bad("logit_bias", "is not supported");
  if (present(b, "logprobs") && !(b["logprobs"].is_boolean() && !b["logprobs"].get<bool>()))
    bad("logprobs", "is not supported");
  if (present(b, "top_logprobs")) bad("top_logprobs", "is not supported");
  if (present(b, "echo") && !(b["echo"].is_boolean() && !b["echo"].get<bool>())) bad("echo", "is not supported");
  if (present(b, "suffix")) bad("suffix", "is not supported");
  if (present(b, "best_of") && !(b["best_of"].is_number_integer() && b["best_of"].get<int64_t>() == 1))
    bad("best_of", "only 1 is supported");
  if (present(b, "tools") || present(b, "functions")) bad(present(b, "tools") ? "tools" : "functions", "is not supported");
  if (present(b, "response_format") &&
      !(b["response_format"].is_object() && b["response_format"].value("type", "") == "text"))
    bad("response_format", "only {\"type\": \"text\"} is supported");
}

// Fields shared by both endpoints; the prompt is set by the caller before.
void common_fields(const json& b, const Engine& engine, const ApiLimits& limits, int64_t default_max_tokens,
                   ParsedRequest* r) {
  refuse_unsupported(b);
  if (!b.contains("model")) throw ApiError(400, "'model' is required", "model");
  if (!b["model"].is_string()) bad("model", "must be a string, got " + type_of(b["model"]));
  r->gen.model = b["model"].get<std::string>();
  if (!engine.has_model(r->gen.model))
    throw ApiError(404, "The model `" + r->gen.model + "` does not exist.", "model", "model_not_found");
  if (int_field(b, "n", 1) != 1) bad("n", "only n = 1 is supported");
  r->stream = bool_field(b, "stream", false);
  if (present(b, "stream_options")) {
    if (!b["stream_options"].is_object()) bad("stream_options", "must be an object");
    if (!r->stream) bad("stream_options", "is only allowed with stream = true");
    r->include_usage = bool_field(b["stream_options"], "include_usage", false);
  }
  auto& s = r->gen.sampling;
  s.temperature = number_field(b, "temperature", 1.0, 0, 2);
  s.top_p = number_field(b, "top_p", 1.0, 0, 1, /*lo_open=*/true);
  s.top_k = int_field(b, "top_k", -1);
  if (s.top_k < -1) bad("top_k", "must be -1 (off) or >= 0, got " + std::to_string(s.top_k));
  if (present(b, "seed")) {
    r->gen.seed = static_cast<uint64_t>(int_field(b, "seed", 0));
  } else {
    static std::mutex m;
    static std::mt19937_64 rng{std::random_device{}()};
    std::lock_guard<std::mutex> g(m);
    r->gen.seed = rng();
  }
  if (present(b, "stop")) {
    auto& st = b["stop"];
    if (st.is_string()) {
      r->gen.stop = {st.get<std::string>()};
    } else if (st.is_array()) {
      if (st.size() > 4) bad("stop", "at most 4 stop sequences, got " + std::to_string(st.size()));
      for (auto& x : st) {
        if (!x.is_string()) bad("stop", "must be a string or a list of strings, got an element " + x.dump());
        r->gen.stop.push_back(x.get<std::string>());
      }
    } else {
      bad("stop", "must be a string or a list of strings, got " + type_of(st));
    }
    for (auto& x : r->gen.stop)
      if (x.empty()) bad("stop", "stop sequences must not be empty");
  }
  const int64_t P = static_cast<int64_t>(r->gen.prompt.size());
  const int64_t limit = limits.max_tokens_limit > 0 ? limits.max_tokens_limit : limits.context_length;
  const char* mt = present(b, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (present(b, mt)) {
    int64_t v = int_field(b, mt, 0);
    if (v < 1) bad(mt, "must be >= 1, got " + std::to_string(v));
    if (v > limit) bad(mt, "must be <= " + std::to_string(limit) + " (the server's limit), got " + std::to_string(v));
    r->gen.max_tokens = v;
  } else {
    r->gen.max_tokens = default_max_tokens > 0 ? std::min(default_max_tokens, limit)
                                               : std::max<int64_t>(1, std::min(limit, limits.context_length - P));
  }
  if (P + r->gen.max_tokens > limits.context_length)
    throw ApiError(400,
                   "This model's maximum context length is " + std::to_string(limits.context_length) +
                       " tokens. However, you requested " + std::to_string(P + r->gen.max_tokens) + " tokens (" +
                       std::to_string(P) + " in the prompt, " + std::to_string(r->gen.max_tokens) +
                       " for the completion). Please reduce the prompt or max_tokens.",
                   present(b, mt) ? mt : "prompt", "context_length_exceeded");
}

std::vector<int64_t> encode(const Tokenizer& tok, const std::string& text, bool add_special, const std::string& field) {
  try {
    return tok.encode(text, add_special);
  } catch (const std::exception& e) {
    bad(field, std::string("cannot be tokenized: ") + e.what());
  }
}

}  // namespace

ParsedRequest parse_completion(const json& b, const Engine& engine, const ApiLimits& limits) {
  ParsedRequest r;
  if (!present(b, "prompt")) throw ApiError(400, "'prompt' is required", "prompt");
  const json& p = b["prompt"];
  const Tokenizer& tok = engine.tokenizer();
  if (p.is_string()) {
    r.gen.prompt = encode(tok, p.get<std::string>(), true, "prompt");
  } else if (p.is_array() && !p.empty() && p[0].is_string()) {
    if (p.size() != 1 || !p[0].is_string()) bad("prompt", "only one prompt per request is supported");
    r.gen.prompt = encode(tok, p[0].get<std::string>(), true, "prompt");
  } else if (p.is_array() && !p.empty() && p[0].is_number_integer()) {
    for (auto& x : p) {
      if (!x.is_number_integer()) bad("prompt", "a token-id prompt must hold integers only");
      int64_t id = x.get<int64_t>();
      if (id < 0 || id >= tok.vocab_size())
        bad("prompt", "token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                          std::to_string(tok.vocab_size()) + ")");
      r.gen.prompt.push_back(id);
    }
  } else {
    bad("prompt", "must be a string, a list of one string or a list of token ids, got " + p.dump());
  }
  if (r.gen.prompt.empty()) bad("prompt", "encodes to no tokens");
  common_fields(b, engine, limits, 16, &r);
  return r;
}

ParsedRequest parse_chat(const json& b, const Engine& engine, const ApiLimits& limits, const std::string& chat_template) {
  ParsedRequest r;
  r.chat = true;
  if (!present(b, "messages")) throw ApiError(400, "'messages' is required", "messages");
  const json& ms = b["messages"];
  if (!ms.is_array() || ms.empty()) bad("messages", "must be a non-empty list of messages");
  static const std::set<std::string> roles = {"system", "user", "assistant", "developer", "tool"};
  json msgs = json::array();
  for (size_t i = 0; i < ms.size(); ++i) {
    const std::string f = "messages[" + std::to_string(i) + "]";
    auto& m = ms[i];
    if (!m.is_object()) bad(f, "must be an object");
    if (!m.contains("role") || !m["role"].is_string() || !roles.count(m["role"].get<std::string>()))
      bad(f + ".role", "must be one of system, user, assistant, developer, tool");
    std::string content;
    if (!m.contains("content") || m["content"].is_null()) {
      content = "";
    } else if (m["content"].is_string()) {
      content = m["content"].get<std::string>();
    } else if (m["content"].is_array()) {  // content parts: text only
      for (auto& part : m["content"]) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
          bad(f + ".content", "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
        content += part["text"].get<std::string>();
      }
    } else {
      bad(f + ".content", "must be a string or a list of text parts, got " + type_of(m["content"]));
    }
    msgs.push_back({{"role", m["role"]}, {"content", content}});
  }
  if (chat_template.empty())
    throw ApiError(400,
                   "This model has no chat template (tokenizer_config.json has no 'chat_template'); use "
                   "/v1/completions, or start the server with --chat_template FILE",
                   "messages", "no_chat_template");
  const Tokenizer& tok = engine.tokenizer();
  std::string text;
  try {
    ChatTemplate t(chat_template);
    auto name = [&](int64_t id) { return id >= 0 ? tok.id_to_token(id) : std::string(); };
    text = t.render(msgs, bool_field(b, "add_generation_prompt", true), name(tok.bos_id), name(tok.eos_id));
  } catch (const ChatTemplateError& e) {
    throw ApiError(400, std::string("chat template: ") + e.what(), "messages", "unsupported_chat_template");
  }
  // As transformers' apply_chat_template(tokenize=True): the template writes the special tokens.
  r.gen.prompt = encode(tok, text, false, "messages");
  if (r.gen.prompt.empty()) bad("messages", "the chat template renders to no tokens");
  common_fields(b, engine, limits, 0, &r);
  return r;
}

std::string openai_finish_reason(const std::string& reason) { return reason == "cancelled" ? "abort" : reason; }

namespace {
json usage_of(const RequestHandle::Result& res) {
  return {{"prompt_tokens", res.prompt_tokens},
          {"completion_tokens", res.completion_tokens},
          {"total_tokens", res.prompt_tokens + res.completion_tokens}};
}
}  // namespace

json completion_response(const ParsedRequest& r, const std::string& id, int64_t created, const std::string& text,
                         const RequestHandle::Result& res) {
  json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", openai_finish_reason(res.finish_reason)}};
  if (r.chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  return {{"id", id},
          {"object", r.chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", r.gen.model},
          {"choices", json::array({choice})},
          {"usage", usage_of(res)}};
}

json stream_chunk(const ParsedRequest& r, const std::string& id, int64_t created, const std::string& text,
                  const std::string& finish_reason, bool first, const RequestHandle::Result* usage) {
  json c = {{"id", id},
            {"object", r.chat ? "chat.completion.chunk" : "text_completion"},
            {"created", created},
            {"model", r.gen.model}};
  if (usage) {
    c["choices"] = json::array();
    c["usage"] = usage_of(*usage);
    return c;
  }
  json choice = {{"index", 0}, {"logprobs", nullptr},
                 {"finish_reason", finish_reason.empty() ? json(nullptr) : json(openai_finish_reason(finish_reason))}};
  if (r.chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || first) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  c["choices"] = json::array({choice});
  if (r.include_usage) c["usage"] = nullptr;
  return c;
}

}  // namespace peft::serve
