#!/usr/bin/env bash
# Main job on the bundled model: build, then run the bundled stories260K (llama2.c checkpoint,
# loaded directly) on a prompt, greedy and sampled.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BIN=${BUILD_DIR:-build}/peft
echo "== greedy =="
$BIN generate --model assets/stories260K --prompt "Once upon a time" --max-new-tokens 128 --temperature 0
echo "== sampled (temperature 0.8, top-p 0.9, seed 42) =="
$BIN generate --model assets/stories260K --prompt "Once upon a time" --max-new-tokens 128 --temperature 0.8 --top-p 0.9 --seed 42
