// `peft serve` over HTTP, in-process on a free loopback port, with cpp-httplib's client and curl:
// greedy output equals the library's generation, streaming, concurrent clients over different
// adapters (continuous batching), adapters loaded and unloaded at run time, a table of bad
// requests with their documented status and error body, a full queue, a client that hangs up.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <map>
#include <regex>

#include "serve/chat_template.h"
#include "serve/row_forward.h"
#include "serve_util.h"

using json = nlohmann::json;
using namespace peft;
using namespace peft::test;

namespace {

json post(httplib::Client& c, const std::string& path, const json& body, int* status = nullptr) {
  auto r = c.Post(path.c_str(), body.dump(), "application/json");
  EXPECT_TRUE(r) << "no response from " << path;
  if (!r) return {};
  if (status) *status = r->status;
  return json::parse(r->body, nullptr, false);
}

// The `data:` payloads of a server-sent-event body.
std::vector<std::string> sse_events(const std::string& body) {
  std::vector<std::string> out;
  size_t p = 0;
  while (p < body.size()) {
    size_t q = body.find("\n\n", p);
    if (q == std::string::npos) q = body.size();
    std::string ev = body.substr(p, q - p);
    if (ev.rfind("data: ", 0) == 0) out.push_back(ev.substr(6));
    p = q + 2;
  }
  return out;
}

json completion(const std::string& model, const std::string& prompt, int64_t max_tokens) {
  return {{"model", model}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}};
}

}  // namespace

TEST(ServeHttp, HealthAndModelsListTheBaseAndEveryAdapter) {
  TestServer s;
  auto c = s.client();
  auto h = c->Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(json::parse(h->body)["status"], "ok");
  auto m = c->Get("/v1/models");
  ASSERT_TRUE(m);
  auto j = json::parse(m->body);
  EXPECT_EQ(j["object"], "list");
  std::vector<std::string> ids;
  for (auto& d : j["data"]) ids.push_back(d["id"]);
  EXPECT_EQ(ids, (std::vector<std::string>{"stories260K", "a0", "a1", "a2", "a3"}));
  EXPECT_TRUE(j["data"][0]["parent"].is_null());
  EXPECT_EQ(j["data"][2]["parent"], "stories260K");
}

TEST(ServeHttp, GreedyCompletionEqualsTheLibrarysGeneration) {
  TestServer s;
  auto c = s.client();
  const std::string prompt = "Once upon a time";
  for (std::string model : {"stories260K", "a1"}) {
    int64_t n = 0;
    const std::string expect = library_greedy(model == "a1" ? story_adapters()[1] : "", prompt, 24, &n);
    int status = 0;
    auto j = post(*c, "/v1/completions", completion(model, prompt, 24), &status);
    ASSERT_EQ(status, 200) << j.dump();
    EXPECT_EQ(j["object"], "text_completion");
    EXPECT_EQ(j["model"], model);
    EXPECT_EQ(j["choices"][0]["text"], expect) << model;
    EXPECT_EQ(j["choices"][0]["finish_reason"], n < 24 ? "stop" : "length");
    EXPECT_EQ(j["usage"]["prompt_tokens"], (int64_t)story_tokenizer()->encode(prompt, true).size());
    EXPECT_EQ(j["usage"]["completion_tokens"], n);
    EXPECT_EQ(j["usage"]["total_tokens"], j["usage"]["prompt_tokens"].get<int64_t>() + n);
  }
  // The base and an adapter disagree (the adapters are not no-ops), so the check above means something.
  EXPECT_NE(library_greedy("", prompt, 24), library_greedy(story_adapters()[1], prompt, 24));
}

TEST(ServeHttp, StreamedChunksConcatenateToTheSameTextAndEndWithDone) {
  TestServer s;
  auto c = s.client();
  const std::string expect = library_greedy(story_adapters()[2], "The little dog", 30);
  json body = completion("a2", "The little dog", 30);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  auto r = c->Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  auto ev = sse_events(r->body);
  ASSERT_GE(ev.size(), 4u) << r->body;
  EXPECT_EQ(ev.back(), "[DONE]");
  std::string text;
  int finishes = 0;
  for (size_t i = 0; i + 1 < ev.size(); ++i) {
    auto j = json::parse(ev[i]);
    if (j["choices"].empty()) {  // the usage chunk, last before [DONE]
      EXPECT_EQ(i + 2, ev.size());
      EXPECT_GT(j["usage"]["completion_tokens"].get<int64_t>(), 0);
      continue;
    }
    text += j["choices"][0]["text"].get<std::string>();
    finishes += !j["choices"][0]["finish_reason"].is_null();
  }
  EXPECT_EQ(text, expect);
  EXPECT_EQ(finishes, 1);
}

TEST(ServeHttp, ConcurrentClientsOverDifferentAdaptersGetTheirSingleRequestOutput) {
  TestServer s;
  const std::vector<std::string> prompts = {"Once upon a time", "The cat", "Tom and Sue", "One day, a bird",
                                            "Lily saw a", "The sun was", "A big red", "Ben wanted"};
  const std::vector<std::string> models = {"a0", "a1", "a2", "a3", "stories260K", "a1", "a0", "a3"};
  std::vector<std::string> expect(8), got(8);
  for (int i = 0; i < 8; ++i) {
    std::string dir = models[i] == "stories260K" ? "" : story_adapters()[models[i][1] - '0'];
    expect[i] = library_greedy(dir, prompts[i], 20 + 3 * i);
  }
  std::vector<std::thread> ts;
  for (int i = 0; i < 8; ++i)
    ts.emplace_back([&, i] {
      auto c = s.client();
      int status = 0;
      json body = completion(models[i], prompts[i], 20 + 3 * i);
      body["stream"] = i % 2 == 1;
      auto r = c->Post("/v1/completions", body.dump(), "application/json");
      if (!r || r->status != 200) return;
      if (i % 2 == 0) {
        got[i] = json::parse(r->body)["choices"][0]["text"];
      } else {
        for (auto& e : sse_events(r->body))
          if (e != "[DONE]") got[i] += json::parse(e)["choices"][0]["text"].get<std::string>();
      }
      (void)status;
    });
  for (auto& t : ts) t.join();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(got[i], expect[i]) << "client " << i << " (" << models[i] << ")";
  // Some step ran several sequences in one forward.
  auto m = s.client()->Get("/metrics");
  ASSERT_TRUE(m);
  std::smatch one, all;
  ASSERT_TRUE(std::regex_search(m->body, one, std::regex("peft_step_batch_size_bucket\\{le=\"1\"\\} (\\d+)")));
  ASSERT_TRUE(std::regex_search(m->body, all, std::regex("peft_step_batch_size_count (\\d+)")));
  EXPECT_LT(std::stoll(one[1]), std::stoll(all[1])) << m->body;
}

TEST(ServeHttp, StopStringsEndTheTextBeforeThem) {
  TestServer s;
  auto c = s.client();
  const std::string full = library_greedy(story_adapters()[0], "Once upon a time", 40);
  ASSERT_GT(full.size(), 20u);
  const std::string stop = full.substr(12, 4);
  const std::string expect = full.substr(0, full.find(stop));
  for (bool stream : {false, true}) {
    json body = completion("a0", "Once upon a time", 40);
    body["stop"] = json::array({"zzzz", stop});
    body["stream"] = stream;
    auto r = c->Post("/v1/completions", body.dump(), "application/json");
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    std::string text, reason;
    if (!stream) {
      auto j = json::parse(r->body);
      text = j["choices"][0]["text"];
      reason = j["choices"][0]["finish_reason"];
    } else {
      for (auto& e : sse_events(r->body)) {
        if (e == "[DONE]") continue;
        auto j = json::parse(e);
        text += j["choices"][0]["text"].get<std::string>();
        if (!j["choices"][0]["finish_reason"].is_null()) reason = j["choices"][0]["finish_reason"];
      }
    }
    EXPECT_EQ(text, expect) << "stream " << stream << ", stop '" << stop << "'";
    EXPECT_EQ(reason, "stop");
  }
}

TEST(ServeHttp, SeededSamplingRepeatsAndSeedsDiffer) {
  TestServer s;
  auto c = s.client();
  json body = {{"model", "a3"}, {"prompt", "Once upon a time"}, {"max_tokens", 30}, {"temperature", 1.0},
               {"top_k", 40}, {"top_p", 0.9}, {"seed", 7}};
  auto t1 = post(*c, "/v1/completions", body)["choices"][0]["text"];
  auto t2 = post(*c, "/v1/completions", body)["choices"][0]["text"];
  body["seed"] = 8;
  auto t3 = post(*c, "/v1/completions", body)["choices"][0]["text"];
  EXPECT_EQ(t1, t2);
  EXPECT_NE(t1, t3);
}

TEST(ServeHttp, AdaptersLoadAndUnloadAtRunTime) {
  TestServer s(serve::EngineOptions{"stories260K", 8, 64}, {}, /*adapters=*/1);
  auto c = s.client();
  int st = 0;
  auto r = c->Post("/v1/load_lora_adapter", json{{"lora_name", "late"}, {"lora_path", story_adapters()[3]}}.dump(),
                   "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  auto models = json::parse(c->Get("/v1/models")->body);
  EXPECT_EQ(models["data"].size(), 3u);
  auto j = post(*c, "/v1/completions", completion("late", "The cat", 16), &st);
  EXPECT_EQ(st, 200);
  EXPECT_EQ(j["choices"][0]["text"], library_greedy(story_adapters()[3], "The cat", 16));
  // A name in use, a bad folder, then unload: gone from the list, 404 afterwards, and again.
  r = c->Post("/v1/load_lora_adapter", json{{"lora_name", "late"}, {"lora_path", story_adapters()[2]}}.dump(),
              "application/json");
  EXPECT_EQ(r->status, 400);
  r = c->Post("/v1/load_lora_adapter", json{{"lora_name", "x"}, {"lora_path", "/nonexistent/adapter"}}.dump(),
              "application/json");
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("/nonexistent/adapter"), std::string::npos) << r->body;
  r = c->Post("/v1/unload_lora_adapter", json{{"lora_name", "late"}}.dump(), "application/json");
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(json::parse(c->Get("/v1/models")->body)["data"].size(), 2u);
  post(*c, "/v1/completions", completion("late", "The cat", 4), &st);
  EXPECT_EQ(st, 404);
  r = c->Post("/v1/unload_lora_adapter", json{{"lora_name", "late"}}.dump(), "application/json");
  EXPECT_EQ(r->status, 404);
  // The same name loads again (another folder) and serves that folder's adapter.
  r = c->Post("/v1/load_lora_adapter", json{{"lora_name", "late"}, {"lora_path", story_adapters()[1]}}.dump(),
              "application/json");
  EXPECT_EQ(r->status, 200) << r->body;
  j = post(*c, "/v1/completions", completion("late", "The cat", 16), &st);
  EXPECT_EQ(j["choices"][0]["text"], library_greedy(story_adapters()[1], "The cat", 16));
}

// Every bad request gets its documented status and an OpenAI error body; the server keeps serving.
TEST(ServeHttp, BadRequestTableGetsDocumentedStatusesAndBodies) {
  TestServer s;
  auto c = s.client();
  const std::string P = "/v1/completions", C = "/v1/chat/completions";
  auto ok = [](json extra) {
    json b = {{"model", "a0"}, {"prompt", "Hi"}, {"max_tokens", 4}};
    for (auto& [k, v] : extra.items()) {
      if (v.is_string() && v == "__erase__")
        b.erase(k);
      else
        b[k] = v;
    }
    return b.dump();
  };
  struct Row {
    std::string what, method, path, body;
    int status;
    std::string type, param;
  };
  const std::string big(9 << 20, 'x');
  std::vector<Row> rows = {
      {"malformed JSON", "POST", P, "{\"model\": \"a0\", ", 400, "invalid_request_error", ""},
      {"body not an object", "POST", P, "[1, 2]", 400, "invalid_request_error", ""},
      {"empty body", "POST", P, "", 400, "invalid_request_error", ""},
      {"model missing", "POST", P, ok({{"model", "__erase__"}}), 400, "invalid_request_error", "model"},
      {"model not a string", "POST", P, ok({{"model", 3}}), 400, "invalid_request_error", "model"},
      {"unknown model", "POST", P, ok({{"model", "nope"}}), 404, "invalid_request_error", "model"},
      {"prompt missing", "POST", P, ok({{"prompt", "__erase__"}}), 400, "invalid_request_error", "prompt"},
      {"prompt a number", "POST", P, ok({{"prompt", 5}}), 400, "invalid_request_error", "prompt"},
      {"two prompts", "POST", P, ok({{"prompt", {"a", "b"}}}), 400, "invalid_request_error", "prompt"},
      {"token id outside the vocabulary", "POST", P, ok({{"prompt", {1, 99999}}}), 400, "invalid_request_error", "prompt"},
      {"max_tokens a string", "POST", P, ok({{"max_tokens", "4"}}), 400, "invalid_request_error", "max_tokens"},
      {"max_tokens zero", "POST", P, ok({{"max_tokens", 0}}), 400, "invalid_request_error", "max_tokens"},
      {"max_tokens over the limit", "POST", P, ok({{"max_tokens", 100000}}), 400, "invalid_request_error", "max_tokens"},
      {"prompt + max_tokens over the context", "POST", P, ok({{"prompt", std::vector<int>(500, 5)}, {"max_tokens", 100}}),
       400, "invalid_request_error", "max_tokens"},
      {"temperature negative", "POST", P, ok({{"temperature", -1}}), 400, "invalid_request_error", "temperature"},
      {"temperature a string", "POST", P, ok({{"temperature", "hot"}}), 400, "invalid_request_error", "temperature"},
      {"top_p zero", "POST", P, ok({{"top_p", 0}}), 400, "invalid_request_error", "top_p"},
      {"top_k fractional", "POST", P, ok({{"top_k", 2.5}}), 400, "invalid_request_error", "top_k"},
      {"n = 2", "POST", P, ok({{"n", 2}}), 400, "invalid_request_error", "n"},
      {"stream not a boolean", "POST", P, ok({{"stream", "yes"}}), 400, "invalid_request_error", "stream"},
      {"stop a number", "POST", P, ok({{"stop", 3}}), 400, "invalid_request_error", "stop"},
      {"five stop strings", "POST", P, ok({{"stop", {"a", "b", "c", "d", "e"}}}), 400, "invalid_request_error", "stop"},
      {"seed a string", "POST", P, ok({{"seed", "x"}}), 400, "invalid_request_error", "seed"},
      {"logprobs (unsupported)", "POST", P, ok({{"logprobs", 2}}), 400, "invalid_request_error", "logprobs"},
      {"presence_penalty (unsupported)", "POST", P, ok({{"presence_penalty", 0.5}}), 400, "invalid_request_error",
       "presence_penalty"},
      {"stream_options without stream", "POST", P, ok({{"stream_options", {{"include_usage", true}}}}), 400,
       "invalid_request_error", "stream_options"},
      {"chat: messages missing", "POST", C, json{{"model", "a0"}}.dump(), 400, "invalid_request_error", "messages"},
      {"chat: bad role", "POST", C, json{{"model", "a0"}, {"messages", {{{"role", "wizard"}, {"content", "hi"}}}}}.dump(),
       400, "invalid_request_error", "messages[0].role"},
      {"chat: no chat template", "POST", C,
       json{{"model", "a0"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}}.dump(), 400, "invalid_request_error",
       "messages"},
      {"load: lora_path missing", "POST", "/v1/load_lora_adapter", json{{"lora_name", "z"}}.dump(), 400,
       "invalid_request_error", "lora_path"},
      {"load: not an adapter folder", "POST", "/v1/load_lora_adapter",
       json{{"lora_name", "z"}, {"lora_path", source_path("assets")}}.dump(), 400, "invalid_request_error", "lora_path"},
      {"unload: unknown adapter", "POST", "/v1/unload_lora_adapter", json{{"lora_name", "z"}}.dump(), 404,
       "invalid_request_error", "lora_name"},
      {"unknown route", "GET", "/v2/nothing", "", 404, "invalid_request_error", ""},
      {"GET on a POST route", "GET", P, "", 404, "invalid_request_error", ""},
      {"body over the size limit", "POST", P, big, 413, "invalid_request_error", ""},
  };
  ASSERT_GE(rows.size(), 20u);
  for (auto& row : rows) {
    auto r = row.method == "GET" ? c->Get(row.path.c_str()) : c->Post(row.path.c_str(), row.body, "application/json");
    ASSERT_TRUE(r) << row.what;
    EXPECT_EQ(r->status, row.status) << row.what << ": " << r->body.substr(0, 300);
    auto j = json::parse(r->body, nullptr, false);
    ASSERT_TRUE(j.is_object() && j.contains("error")) << row.what << ": " << r->body.substr(0, 300);
    auto& e = j["error"];
    EXPECT_TRUE(e["message"].is_string() && !e["message"].get<std::string>().empty()) << row.what;
    EXPECT_EQ(e["type"], row.type) << row.what;
    if (row.param.empty())
      EXPECT_TRUE(e.contains("param")) << row.what;
    else
      EXPECT_EQ(e["param"], row.param) << row.what << ": " << e.dump();
    EXPECT_TRUE(e.contains("code")) << row.what;
  }
  // Still serving, and the right answer.
  int st = 0;
  auto j = post(*c, P, completion("a0", "Once upon a time", 12), &st);
  EXPECT_EQ(st, 200);
  EXPECT_EQ(j["choices"][0]["text"], library_greedy(story_adapters()[0], "Once upon a time", 12));
}

// A forward that can be held: the first request occupies the only slot while a second arrives.
TEST(ServeHttp, AFullQueueGets429AndTheServerRecovers) {
  std::atomic<bool> hold{true};
  std::atomic<int> calls{0};
  serve::EngineOptions eo{"stories260K", /*max_batch=*/1, /*max_queue=*/0};
  eo.before_forward = [&] {
    ++calls;
    while (hold) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  };
  TestServer s(eo);
  int first = 0;
  std::thread t([&] { post(*s.client(), "/v1/completions", completion("a0", "Hi", 4), &first); });
  while (calls == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  int st = 0;
  auto j = post(*s.client(), "/v1/completions", completion("a1", "Hi", 4), &st);
  EXPECT_EQ(st, 429) << j.dump();
  EXPECT_EQ(j["error"]["type"], "rate_limit_error");
  EXPECT_EQ(j["error"]["code"], "queue_full");
  hold = false;
  t.join();
  EXPECT_EQ(first, 200);
  post(*s.client(), "/v1/completions", completion("a1", "Hi", 4), &st);
  EXPECT_EQ(st, 200);
}

TEST(ServeHttp, AClientThatHangsUpMidStreamFreesItsSlot) {
  serve::EngineOptions eo{"stories260K", 8, 64};
  eo.before_forward = [] { std::this_thread::sleep_for(std::chrono::milliseconds(5)); };
  TestServer s(eo);
  json body = completion("a0", "Once upon a time", 400);  // ~2 s of steps: cut long before
  body["stream"] = true;
  int chunks = 0;
  // The receiver gives up after a few chunks (httplib closes the connection).
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
  auto c2 = s.client();
  c2->send(req);
  EXPECT_GE(chunks, 3);
  // The engine retires it as cancelled well before 400 tokens.
  bool freed = false;
  for (int i = 0; i < 400 && !freed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    auto m = s.client()->Get("/metrics");
    freed = m && m->body.find("finish_reason=\"cancelled\"} 1") != std::string::npos &&
            m->body.find("peft_running_sequences 0") != std::string::npos;
  }
  EXPECT_TRUE(freed);
}

TEST(ServeHttp, ChatCompletionsUseTheChatTemplate) {
  serve::ServerOptions so;
  so.chat_template =
      "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] | trim }}\n{% endfor %}"
      "{% if add_generation_prompt %}ASSISTANT:{% endif %}";
  TestServer s(serve::EngineOptions{"stories260K", 8, 64}, so);
  auto c = s.client();
  json body = {{"model", "a2"},
               {"messages", {{{"role", "system"}, {"content", "Tell a story."}}, {{"role", "user"}, {"content", " Once upon a time "}}}},
               {"max_tokens", 20},
               {"temperature", 0}};
  int st = 0;
  auto j = post(*c, "/v1/chat/completions", body, &st);
  ASSERT_EQ(st, 200) << j.dump();
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  // The rendered prompt, written out by hand; tokenized without BOS (the template writes specials).
  const std::string rendered = "SYSTEM: Tell a story.\nUSER: Once upon a time\nASSISTANT:";
  auto ids = story_tokenizer()->encode(rendered, false);
  EXPECT_EQ(j["usage"]["prompt_tokens"], (int64_t)ids.size());
  EXPECT_EQ(j["choices"][0]["message"]["content"], library_greedy_ids(story_adapters()[2], ids, 20));
  // Streaming: the first delta carries the role, the deltas concatenate to the same content.
  body["stream"] = true;
  auto r = c->Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(r);
  auto ev = sse_events(r->body);
  ASSERT_GE(ev.size(), 3u);
  EXPECT_EQ(json::parse(ev[0])["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  for (auto& e : ev)
    if (e != "[DONE]") text += json::parse(e)["choices"][0]["delta"].value("content", "");
  EXPECT_EQ(text, j["choices"][0]["message"]["content"]);
  EXPECT_EQ(ev.back(), "[DONE]");
  // A template outside the supported subset: 400 naming what is unsupported.
  serve::ServerOptions bad;
  bad.chat_template = "{% macro m() %}x{% endmacro %}{{ m() }}";
  TestServer s2(serve::EngineOptions{"stories260K", 8, 64}, bad, 1);
  body["stream"] = false;
  body["model"] = "a0";
  j = post(*s2.client(), "/v1/chat/completions", body, &st);
  EXPECT_EQ(st, 400);
  EXPECT_EQ(j["error"]["code"], "unsupported_chat_template");
  EXPECT_NE(j["error"]["message"].get<std::string>().find("macro"), std::string::npos) << j.dump();
}

TEST(ServeHttp, MetricsArePrometheusText) {
  TestServer s;
  auto c = s.client();
  int64_t tokens = 0;
  std::map<std::string, int> reasons;
  for (int i = 0; i < 3; ++i) {
    auto j = post(*c, "/v1/completions", completion("a" + std::to_string(i), "The cat", 8));
    tokens += j["usage"]["completion_tokens"].get<int64_t>();
    ++reasons["peft_requests_finished_total{model=\"a" + std::to_string(i) + "\",finish_reason=\"" +
              j["choices"][0]["finish_reason"].get<std::string>() + "\"} 1"];
  }
  post(*c, "/v1/completions", completion("nope", "The cat", 8));
  auto m = c->Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->status, 200);
  const std::string& b = m->body;
  std::vector<std::string> want = {"# TYPE peft_http_requests_total counter", "# TYPE peft_queue_length gauge",
                                   "# TYPE peft_request_latency_seconds histogram",
                                   "peft_http_requests_total{path=\"/v1/completions\",code=\"200\"} 3",
                                   "peft_http_requests_total{path=\"/v1/completions\",code=\"404\"} 1",
                                   "peft_request_latency_seconds_count 3", "peft_queue_length 0",
                                   "peft_generation_tokens_total " + std::to_string(tokens)};
  for (auto& [k, n] : reasons) want.push_back(k);
  for (auto& k : want) EXPECT_NE(b.find(k), std::string::npos) << k << "\n" << b;
  // Buckets are cumulative and end with +Inf = count.
  std::regex bucket("peft_request_latency_seconds_bucket\\{le=\"([^\"]+)\"\\} (\\d+)");
  int64_t prev = 0, last = -1;
  for (std::sregex_iterator it(b.begin(), b.end(), bucket), end; it != end; ++it) {
    int64_t v = std::stoll((*it)[2]);
    EXPECT_GE(v, prev);
    prev = v;
    if ((*it)[1] == "+Inf") last = v;
  }
  EXPECT_EQ(last, 3);
}

TEST(ServeHttp, CurlTalksToTheServer) {
  if (std::system("curl --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "curl is not installed";
  TestServer s;
  const std::string url = "http://127.0.0.1:" + std::to_string(s.port);
  auto run = [](const std::string& cmd) {
    std::string out;
    FILE* f = popen(cmd.c_str(), "r");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
    pclose(f);
    return out;
  };
  const std::string expect = library_greedy(story_adapters()[1], "The cat", 16);
  auto body = run("curl -s " + url + "/v1/completions -H 'Content-Type: application/json' -d '" +
                  completion("a1", "The cat", 16).dump() + "'");
  EXPECT_EQ(json::parse(body)["choices"][0]["text"], expect) << body;
  json sb = completion("a1", "The cat", 16);
  sb["stream"] = true;
  auto stream = run("curl -s -N " + url + "/v1/completions -H 'Content-Type: application/json' -d '" + sb.dump() + "'");
  auto ev = sse_events(stream);
  ASSERT_FALSE(ev.empty()) << stream;
  EXPECT_EQ(ev.back(), "[DONE]");
  std::string text;
  for (auto& e : ev)
    if (e != "[DONE]") text += json::parse(e)["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text, expect);
  auto code = run("curl -s -o /dev/null -w '%{http_code}' " + url + "/v1/completions -d '{bad'");
  EXPECT_EQ(code, "400");
}
