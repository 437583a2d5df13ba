#!/usr/bin/env bash
# Memory vs model size (docs/ASSESSMENT.md, "Memory vs model size"): peak RSS and the step's own
# peak of one training step (forward + backward + AdamW) of three random-weight Llama-architecture
# models, for full fine-tuning and LoRA (r 8 on q, v) on a float32, a bfloat16 and a 4-bit NF4
# base (LoRA only: a quantized base is frozen). Each configuration runs in its own
# `peft bench --worker` process, so its peak (VmHWM) is its own.
#   scripts/memory_vs_size.sh [PEFT_BINARY] [OUT.jsonl]
#   peft assess --memory-vs-size OUT.jsonl --out DIR      # the plot (DIR/memory_vs_size.svg)
set -euo pipefail
PEFT=${1:-build/peft}
OUT=${2:-/dev/null}
: > "$OUT"
SIZES=("--hidden 256 --layers 4 --heads 4 --intermediate 704" "--medium" "")
NAMES=("S (hidden 256, 4 layers)" "M (hidden 512, 8 layers)" "L (hidden 768, 12 layers)")
printf "%-28s %-6s %-9s %10s %10s %10s %10s\n" model method base params "model MiB" "peak MiB" "step MiB"
for i in 0 1 2; do
  for cfg in "full float32" "full bfloat16" "lora float32" "lora bfloat16" "lora nf4"; do
    read -r method base <<< "$cfg"
    extra="--dtype $base"
    [ "$base" = nf4 ] && extra="--dtype float32 --quantize nf4 --compute_dtype bfloat16"
    # shellcheck disable=SC2086
    line=$(OMP_WAIT_POLICY=PASSIVE "$PEFT" bench --worker "$method" ${SIZES[$i]} $extra --threads 2 --warmup 1 --steps 1 | tail -1)
    # The record with its labels (peft assess --memory-vs-size OUT.jsonl plots these).
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(config=sys.argv[2]+" "+sys.argv[3], size=sys.argv[4]); print(json.dumps(r))' \
      "$line" "$method" "$base" "${NAMES[$i]}" >> "$OUT"
    python3 - "${NAMES[$i]}" "$method" "$base" "$line" <<'PY'
import json, sys
r = json.loads(sys.argv[4])
print(f"{sys.argv[1]:<28} {sys.argv[2]:<6} {sys.argv[3]:<9} {r['total'] / 1e6:9.1f}M {r['rss_model_mib']:10.0f} {r['peak_rss_mib']:10.0f} {r['step_peak_mib']:10.0f}")
PY
  done
done
