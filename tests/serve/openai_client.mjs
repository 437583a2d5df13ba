// The official `openai` npm client against a running `peft serve` (scripts/serve_openai_client.sh
// starts the server and installs the package). Checks completions, chat, streaming, adapter
// selection and load/unload; greedy texts must equal the expected ones passed in EXPECT (JSON:
// {"a0": text, "base": text} from the server's own non-streamed answers are NOT used: they come
// from `peft generate`, run by the script).
import OpenAI from "openai";
import assert from "node:assert/strict";

const base = process.env.BASE_URL;
const expect = JSON.parse(process.env.EXPECT);
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "unused" });

const models = await client.models.list();
const ids = models.data.map((m) => m.id);
assert.ok(ids.includes("stories260K") && ids.includes("a0"), "models: " + ids.join(","));

for (const model of ["stories260K", "a0"]) {
  const r = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 24, temperature: 0 });
  assert.equal(r.choices[0].text, expect[model], model);
  assert.ok(r.usage.completion_tokens > 0);
}

let streamed = "";
const stream = await client.completions.create({ model: "a0", prompt: "Once upon a time", max_tokens: 24, temperature: 0, stream: true });
for await (const chunk of stream) streamed += chunk.choices[0]?.text ?? "";
assert.equal(streamed, expect["a0"], "stream");

const chat = await client.chat.completions.create({ model: "a0", messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 16, temperature: 0 });
assert.equal(chat.choices[0].message.role, "assistant");
assert.equal(chat.choices[0].message.content, expect["chat"], "chat");
let chatStreamed = "";
const cs = await client.chat.completions.create({ model: "a0", messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 16, temperature: 0, stream: true });
for await (const chunk of cs) chatStreamed += chunk.choices[0]?.delta?.content ?? "";
assert.equal(chatStreamed, expect["chat"], "chat stream");

// Errors come back as the client's typed errors.
await assert.rejects(client.completions.create({ model: "nope", prompt: "x", max_tokens: 2 }), (e) => e.status === 404);
await assert.rejects(client.completions.create({ model: "a0", prompt: "x", max_tokens: 2, n: 2 }), (e) => e.status === 400);

// vLLM's load / unload routes (not in the client: plain fetch).
let res = await fetch(base + "/v1/load_lora_adapter", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ lora_name: "late", lora_path: process.env.LATE_ADAPTER }) });
assert.equal(res.status, 200);
const late = await client.completions.create({ model: "late", prompt: "Once upon a time", max_tokens: 24, temperature: 0 });
assert.equal(late.choices[0].text, expect["late"], "late");
res = await fetch(base + "/v1/unload_lora_adapter", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ lora_name: "late" }) });
assert.equal(res.status, 200);
await assert.rejects(client.completions.create({ model: "late", prompt: "x", max_tokens: 2 }), (e) => e.status === 404);
console.log("openai client: all checks passed");
