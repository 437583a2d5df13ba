// `peft serve` request bodies (src/serve/openai_api.h): byte 0 picks the route. 0: the rest is a
// POST /v1/completions body; 1: a POST /v1/chat/completions body (a fixed role/content template);
// 2: the rest is a chat template (tokenizer_config.json's `chat_template`, from strangers too)
// rendered for a fixed chat request. A parsed request is then answered (response object and
// stream chunks). The server's contract: a bad request is an ApiError (HTTP 4xx with an OpenAI
// error body); any other exception would be a 500, so here it is a finding.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "fuzz_util.h"
#include "peft/model.h"
#include "peft/tokenizer.h"
#include "serve/engine.h"
#include "serve/openai_api.h"

namespace {

peft::serve::Engine& engine() {
  // Never destroyed: its thread outlives the fuzzing loop; the process exit ends it.
  static auto* e = new peft::serve::Engine(
      peft::load_model(std::string(PEFT_FUZZ_SOURCE_DIR) + "/assets/stories260K"),
      peft::load_tokenizer(std::string(PEFT_FUZZ_SOURCE_DIR) + "/assets/stories260K"),
      peft::serve::EngineOptions{"stories260K", 2, 4});
  return *e;
}

const char* kTemplate = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}assistant:{% endif %}";

void answer(const peft::serve::ParsedRequest& r) {
  peft::serve::RequestHandle::Result res;
  res.finish_reason = "length";
  res.prompt_tokens = static_cast<int64_t>(r.gen.prompt.size());
  res.completion_tokens = r.gen.max_tokens;
  (void)peft::serve::completion_response(r, "cmpl-fuzz", 0, "text", res).dump();
  (void)peft::serve::stream_chunk(r, "cmpl-fuzz", 0, "t", "", true).dump();
  (void)peft::serve::stream_chunk(r, "cmpl-fuzz", 0, "", "length", false, &res).dump();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const int route = data[0] % 3;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
  const peft::serve::ApiLimits limits{512, 256};
  try {
    if (route == 0) {
      answer(peft::serve::parse_completion(peft::serve::parse_body(rest), engine(), limits));
    } else if (route == 1) {
      answer(peft::serve::parse_chat(peft::serve::parse_body(rest), engine(), limits, kTemplate));
    } else {
      const auto body = nlohmann::json::parse(
          R"({"model":"stories260K","max_tokens":4,"messages":[{"role":"system","content":"Be brief."},)"
          R"({"role":"user","content":"Once upon a time"},{"role":"assistant","content":"there was"}]})");
      answer(peft::serve::parse_chat(body, engine(), limits, rest));
    }
  } catch (const peft::serve::ApiError&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "not an ApiError (the server would answer 500): %s\n", e.what());
    std::abort();
  }
  return 0;
}
