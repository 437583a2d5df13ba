#!/usr/bin/env bash
# The main job: build, then fine-tune the bundled stories260K (a real pretrained Llama-family
# model, llama2.c format) with LoRA on the bundled E2E NLG data (meaning representation ->
# restaurant description), and compare the base model with the adapted one on held-out data:
# validation loss/perplexity and BLEU/chrF/ROUGE-L of greedy outputs on the E2E test MRs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
BIN=${BUILD_DIR:-build}/peft
RECIPE=${RECIPE:-recipes/e2e_lora.json}
OUT=${OUT:-runs/e2e-lora}
mkdir -p "$OUT"
MODEL=assets/stories260K
GEN="--data assets/e2e/test.jsonl --metrics bleu,chrf,rouge_l --max-new-tokens 64 --show 3"
LOSS="--data assets/e2e/validation.jsonl --metrics loss,perplexity --max-length 192"

echo "== base model: held-out E2E test (greedy) =="
$BIN eval --model $MODEL $GEN --out "$OUT/base_generation.json"
$BIN eval --model $MODEL $LOSS --out "$OUT/base_loss.json"

echo "== fine-tuning with LoRA ($RECIPE) =="
$BIN train --config "$RECIPE" --output-dir "$OUT"

echo "== adapted model: held-out E2E test (greedy) =="
$BIN eval --model $MODEL --adapter "$OUT" $GEN --out "$OUT/lora_generation.json"
$BIN eval --model $MODEL --adapter "$OUT" $LOSS --out "$OUT/lora_loss.json"

python3 - "$OUT" <<'PY' 2>/dev/null || cat "$OUT"/*_generation.json "$OUT"/*_loss.json
import json, sys
d = sys.argv[1]
rows = [("validation loss", "loss"), ("validation perplexity", "perplexity"), ("test BLEU", "bleu"),
        ("test chrF", "chrf"), ("test ROUGE-L", "rouge_l")]
r = {k: {**json.load(open(f"{d}/{k}_loss.json")), **json.load(open(f"{d}/{k}_generation.json"))} for k in ("base", "lora")}
print(f"\n{'metric':24}{'base':>10}{'LoRA':>10}")
for name, key in rows:
    print(f"{name:24}{r['base'][key]:>10.3f}{r['lora'][key]:>10.3f}")
print(f"\nadapter, metrics.jsonl and report.html (loss curves): {d}/")
PY
