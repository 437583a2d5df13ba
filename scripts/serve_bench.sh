#!/usr/bin/env bash
# Load test of `peft serve` (docs/SERVE.md): C concurrent clients over A adapters on the bundled
# stories260K, N requests in all (greedy), against a server with continuous batching
# (--max_batch C) and then one request at a time (--max_batch 1), in the same run. Checks that
# every response equals the one-at-a-time run's response for the same (adapter, prompt) and that
# none is lost; reports p50 / p99 latency and generated tokens/s of both and their ratio.
#
#   scripts/serve_bench.sh [BUILD_DIR]      env: CLIENTS=8 ADAPTERS=4 REQUESTS=64 MAX_TOKENS=48 TIME_LIMIT=600
set -euo pipefail
BUILD=${1:-build}
PEFT="$BUILD/peft"
CLIENTS=${CLIENTS:-8}
ADAPTERS=${ADAPTERS:-4}
REQUESTS=${REQUESTS:-64}
MAX_TOKENS=${MAX_TOKENS:-48}
TIME_LIMIT=${TIME_LIMIT:-600}
MODEL=${MODEL:-assets/stories260K}
command -v curl > /dev/null || { echo "serve_bench: curl is not installed"; exit 1; }
[ -x "$PEFT" ] || { echo "serve_bench: $PEFT not built"; exit 1; }
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
SERVER=""

# A adapters: random LoRA factors (init_lora_weights false), one step at learning rate 1e-9 (as good as untrained).
ADAPTER_ARGS=""
for i in $(seq 0 $((ADAPTERS - 1))); do
  "$PEFT" train --model "$MODEL" --train assets/e2e/train.jsonl --method lora --output-dir "$WORK/a$i" \
      --max_steps 1 --learning_rate 1e-9 --init_lora_weights false --seed $((100 + i)) > "$WORK/train$i.log" 2>&1 \
    || { echo "serve_bench: could not make adapter $i:"; tail -5 "$WORK/train$i.log"; exit 1; }
  ADAPTER_ARGS="$ADAPTER_ARGS --adapter a$i=$WORK/a$i"
done

PROMPTS=("Once upon a time" "The little dog" "Tom and Sue" "One day, a bird" "Lily saw a" "The sun was" "A big red" "Ben wanted")

start_server() {  # $1: max_batch
  "$PEFT" serve --model "$MODEL" $ADAPTER_ARGS --port 0 --max_batch "$1" --max_queue 256 > "$WORK/server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 600); do
    PORT=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/server.log")
    [ -n "$PORT" ] && return 0
    sleep 0.1
  done
  echo "serve_bench: server did not start"; cat "$WORK/server.log"; exit 1
}

run_load() {  # $1: tag; writes $WORK/$1/<request>.json and .time
  mkdir -p "$WORK/$1"
  local start end
  start=$(date +%s.%N)
  local pids=()
  for c in $(seq 0 $((CLIENTS - 1))); do
    (
      for r in $(seq "$c" "$CLIENTS" $((REQUESTS - 1))); do
        a=$((r % ADAPTERS)); p=${PROMPTS[$((r % ${#PROMPTS[@]}))]}
        curl -s -m "$TIME_LIMIT" -o "$WORK/$1/$r.json" -w '%{time_total}\n' "http://127.0.0.1:$PORT/v1/completions" \
          -H 'Content-Type: application/json' \
          -d "{\"model\":\"a$a\",\"prompt\":\"$p\",\"max_tokens\":$MAX_TOKENS,\"temperature\":0}" > "$WORK/$1/$r.time" || true
      done
    ) &
    pids+=($!)
  done
  wait "${pids[@]}"  # the clients only: a bare `wait` would wait for the server too
  end=$(date +%s.%N)
  echo "$start $end" > "$WORK/$1/wall"
}

report() {  # $1: tag
  local wall toks
  wall=$(awk '{print $2 - $1}' "$WORK/$1/wall")
  toks=$(cat "$WORK/$1"/*.json | grep -o '"completion_tokens":[0-9]*' | cut -d: -f2 | awk '{s += $1} END {print s + 0}')
  sort -g "$WORK/$1"/*.time | awk -v tag="$1" -v wall="$wall" -v toks="$toks" '
    {v[NR] = $1} END {
      p50 = v[int((NR - 1) * 0.50) + 1]; p99 = v[int((NR - 1) * 0.99) + 1];
      printf "%-12s requests %d  wall %.2f s  p50 %.3f s  p99 %.3f s  %d tokens  %.1f tokens/s\n", tag, NR, wall, p50, p99, toks, toks / wall
    }'
  echo "$toks $wall" > "$WORK/$1/tps"
}

start_server "$CLIENTS"; run_load batched; kill -TERM "$SERVER"; wait "$SERVER" || true
start_server 1;          run_load single;  kill -TERM "$SERVER"; wait "$SERVER" || true
SERVER=""

lost=0; wrong=0
for r in $(seq 0 $((REQUESTS - 1))); do
  for t in batched single; do
    grep -q '"text"' "$WORK/$t/$r.json" 2>/dev/null || { lost=$((lost + 1)); echo "lost: $t request $r"; }
  done
  a=$(grep -o '"text":"[^"]*\(\\.[^"]*\)*"' "$WORK/batched/$r.json" 2>/dev/null || true)
  b=$(grep -o '"text":"[^"]*\(\\.[^"]*\)*"' "$WORK/single/$r.json" 2>/dev/null || true)
  [ "$a" = "$b" ] || { wrong=$((wrong + 1)); echo "differs: request $r"; }
done
echo "serve_bench: $CLIENTS clients, $ADAPTERS adapters, $REQUESTS requests, max_tokens $MAX_TOKENS (greedy)"
report batched
report single
read -r tb wb < "$WORK/batched/tps"; read -r ts ws < "$WORK/single/tps"
awk -v tb="$tb" -v wb="$wb" -v ts="$ts" -v ws="$ws" 'BEGIN {printf "throughput ratio (continuous batching / one at a time): %.2fx\n", (tb / wb) / (ts / ws)}'
echo "lost $lost, differing $wrong"
[ "$lost" = 0 ] && [ "$wrong" = 0 ]
