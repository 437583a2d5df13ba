#!/usr/bin/env bash
# Worked example of `peft combine` on the bundled stories260K (docs/COMBINE.md): two LoRA
# adapters trained on different tasks (E2E restaurant descriptions; Alpaca instructions), then
# merged into one adapter with each combination type; every result is evaluated on both tasks'
# held-out data (E2E validation; the last 20 Alpaca rows, not trained on).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BUILD_DIR:-build}/peft
OUT=${OUT:-runs/combine}
M=assets/stories260K
mkdir -p "$OUT"
head -n 180 assets/alpaca/alpaca_gpt4_sample.jsonl > "$OUT/alpaca_train.jsonl"
tail -n 20 assets/alpaca/alpaca_gpt4_sample.jsonl > "$OUT/alpaca_heldout.jsonl"
COMMON=(--method lora --r 8 --lora_alpha 16 --lora_dropout 0.0 --max_length 384 --bad_rows skip
        --learning_rate 0.004 --max_steps "${STEPS:-120}" --per_device_train_batch_size 8 --save_steps 1000 --seed 42)
[ -f "$OUT/e2e/adapter_model.safetensors" ] ||
  $BIN train --model $M --train assets/e2e/train.jsonl --output-dir "$OUT/e2e" "${COMMON[@]}" >"$OUT/e2e.log" 2>&1
[ -f "$OUT/alpaca/adapter_model.safetensors" ] ||
  $BIN train --model $M --train "$OUT/alpaca_train.jsonl" --output-dir "$OUT/alpaca" "${COMMON[@]}" >"$OUT/alpaca.log" 2>&1

loss() {  # loss of the model (+ adapter $2 if given) on data file $1
  local extra=()
  [ -n "${2:-}" ] && extra=(--adapter "$2")
  rm -f "$OUT/tmp.json"
  $BIN eval --model $M "${extra[@]}" --data "$1" --metrics loss --max-length 384 --out "$OUT/tmp.json" >/dev/null 2>>"$OUT/eval.log"
  python3 -c "import json; print('%.3f' % json.load(open('$OUT/tmp.json'))['loss'])"
}
row() { printf '%-58s %9s %12s\n' "$1" "$(loss assets/e2e/validation.jsonl "$2")" "$(loss "$OUT/alpaca_heldout.jsonl" "$2")"; }
printf '%-58s %9s %12s\n' "adapter" "E2E loss" "Alpaca loss"
row "base stories260K" ""
row "e2e adapter" "$OUT/e2e"
row "alpaca adapter" "$OUT/alpaca"
for spec in "linear" "cat" "svd" "ties --density 0.5" "dare_linear --density 0.5 --seed 0" \
            "dare_ties --density 0.5 --seed 0" "dare_ties --density 0.5 --seed 0 --dare_rescale" "magnitude_prune --density 0.5"; do
  name=$(echo "$spec" | tr -d ' -' | sed 's/density0.5//; s/seed0//')
  $BIN combine --model $M --adapter e2e="$OUT/e2e" --adapter alpaca="$OUT/alpaca" --weights 0.5,0.5 \
      --combination $spec --out "$OUT/$name" >/dev/null
  row "combine 0.5/0.5 $spec" "$OUT/$name"
done
