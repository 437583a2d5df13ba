#!/usr/bin/env bash
# The official `openai` npm package against `peft serve` (tests/serve/openai_client.mjs):
# completions, chat, streaming, adapter selection, load/unload, typed errors. Needs Node >= 18
# and the npm registry; without either it prints why and exits 77 (ctest: skipped), so machines
# without network pass. Expected greedy texts come from `peft generate` with the same adapter.
#
#   scripts/serve_openai_client.sh [BUILD_DIR]
set -euo pipefail
BUILD=${1:-build}
PEFT="$(cd "$(dirname "$BUILD/peft")" && pwd)/peft"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL="$ROOT/assets/stories260K"
command -v node > /dev/null || { echo "serve_openai_client: SKIPPED (node is not installed)"; exit 77; }
command -v npm > /dev/null || { echo "serve_openai_client: SKIPPED (npm is not installed)"; exit 77; }
command -v curl > /dev/null || { echo "serve_openai_client: SKIPPED (curl is not installed)"; exit 77; }
WORK=$(mktemp -d)
SERVER=""
trap '[ -n "$SERVER" ] && kill $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
if ! (cd "$WORK" && timeout 120 npm install --silent --no-audit --no-fund openai@4 > npm.log 2>&1); then
  echo "serve_openai_client: SKIPPED (npm install openai failed: no registry?)"; tail -3 "$WORK/npm.log"; exit 77
fi
cp "$ROOT/tests/serve/openai_client.mjs" "$WORK/"

# Two adapters: random LoRA factors, one step at learning rate 1e-9 (as good as untrained).
for i in 0 1; do
  "$PEFT" train --model "$MODEL" --train "$ROOT/assets/e2e/train.jsonl" --method lora --output-dir "$WORK/a$i" \
    --max_steps 1 --learning_rate 1e-9 --init_lora_weights false --seed $((200 + i)) > "$WORK/train$i.log" 2>&1 \
    || { echo "serve_openai_client: adapter $i failed"; tail -5 "$WORK/train$i.log"; exit 1; }
done
echo '{% for m in messages %}{{ m["content"] }}{% endfor %}' > "$WORK/chat.jinja"
"$PEFT" serve --model "$MODEL" --adapter "a0=$WORK/a0" --chat_template "$WORK/chat.jinja" --port 0 > "$WORK/server.log" 2>&1 &
SERVER=$!
PORT=""
for _ in $(seq 600); do
  PORT=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/server.log")
  [ -n "$PORT" ] && break
  sleep 0.1
done
[ -n "$PORT" ] || { echo "serve_openai_client: the server did not start"; cat "$WORK/server.log"; exit 1; }

gen() {  # continuation `peft generate` prints for "Once upon a time" (args: extra options)
  "$PEFT" generate --model "$MODEL" --prompt "Once upon a time" --max-new-tokens 24 --temperature 0 "$@" 2> /dev/null \
    | sed 's/^Once upon a time//'
}
# The chat template renders the user message alone, tokenized without BOS: its expected reply is
# the completion of those token ids.
IDS=$("$PEFT" tokenize --model "$MODEL" --text "Once upon a time" --no-special | head -1 | tr ' ' ',')
CHAT=$(curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"model\":\"a0\",\"prompt\":[$IDS],\"max_tokens\":16,\"temperature\":0}" | node -e \
  'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.stringify(JSON.parse(s).choices[0].text)))')
export EXPECT
EXPECT=$(node -e 'const [b,a,l,c]=process.argv.slice(1);console.log(JSON.stringify({stories260K:b,a0:a,late:l,chat:JSON.parse(c)}))' \
  "$(gen)" "$(gen --adapter "$WORK/a0")" "$(gen --adapter "$WORK/a1")" "$CHAT")
export BASE_URL="http://127.0.0.1:$PORT" LATE_ADAPTER="$WORK/a1"
(cd "$WORK" && node openai_client.mjs)
kill -TERM "$SERVER"; wait "$SERVER"; SERVER=""
echo "serve_openai_client: passed"
