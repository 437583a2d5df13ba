// The OpenAI request and response bodies of `peft serve` (docs/SERVE.md): validation of
// /v1/completions and /v1/chat/completions requests into an engine request, the response and
// stream-chunk objects, and OpenAI-style error bodies {"error": {message, type, param, code}}.
// No HTTP here (serve/server.cpp does that), so every rule is testable on its own.
#pragma once
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

#include "serve/engine.h"

namespace peft::serve {

/// A request the server refuses: HTTP status and the body's fields.
struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int status, std::string message, std::string param = "", std::string code = "",
           std::string type = "invalid_request_error");
};
nlohmann::json error_body(const ApiError& e);

struct ApiLimits {
  int64_t context_length = 0;    // prompt + max_tokens must fit
  int64_t max_tokens_limit = 0;  // largest max_tokens accepted (0: the context length)
};

struct ParsedRequest {
  GenRequest gen;
  bool chat = false, stream = false, include_usage = false;
};

/// POST /v1/completions. `prompt`: a string, a list of one string, or a list of token ids.
ParsedRequest parse_completion(const nlohmann::json& body, const Engine& engine, const ApiLimits& limits);
/// POST /v1/chat/completions. `chat_template`: a Jinja chat template (serve/chat_template.h); empty: none.
ParsedRequest parse_chat(const nlohmann::json& body, const Engine& engine, const ApiLimits& limits,
                         const std::string& chat_template);
/// The body parsed as a JSON object, or ApiError 400 saying why not.
nlohmann::json parse_body(const std::string& body);

/// The non-streamed response of a finished request.
nlohmann::json completion_response(const ParsedRequest& r, const std::string& id, int64_t created, const std::string& text,
                                   const RequestHandle::Result& res);
/// One stream chunk: `text` new text (chat: first chunk carries the role), `finish_reason` empty
/// while running; usage given: the usage-only chunk of stream_options.include_usage.
nlohmann::json stream_chunk(const ParsedRequest& r, const std::string& id, int64_t created, const std::string& text,
                            const std::string& finish_reason, bool first, const RequestHandle::Result* usage = nullptr);
/// OpenAI's finish_reason for the engine's (cancelled -> "abort", as vLLM).
std::string openai_finish_reason(const std::string& engine_reason);

}  // namespace peft::serve
