#!/usr/bin/env bash
# Peak RSS of one training step with and without gradient checkpointing / the chunked loss
# (docs/MEMORY.md). Each configuration runs in its own `peft bench --worker` process, so the
# peak (VmHWM) belongs to it alone.
#   scripts/memory_bench.sh [PEFT_BINARY] [SHAPE_FLAG...]     e.g. scripts/memory_bench.sh build/peft --medium
set -euo pipefail
PEFT=${1:-build/peft}
shift || true
SHAPE=${*:---medium}
printf "%-6s %-28s %10s %10s %10s %12s\n" method options "model MiB" "peak MiB" "step MiB" "tokens/s"
for method in lora full; do
  for opts in "" "--gradient_checkpointing true" "--loss_chunk_tokens 128" "--gradient_checkpointing true --loss_chunk_tokens 128"; do
    # shellcheck disable=SC2086
    line=$(OMP_WAIT_POLICY=PASSIVE "$PEFT" bench --worker "$method" $SHAPE --threads 2 --warmup 1 --steps 2 $opts | tail -1)
    python3 - "$method" "${opts:-(none)}" "$line" <<'PY'
import json, sys
r = json.loads(sys.argv[3])
print(f"{sys.argv[1]:<6} {sys.argv[2]:<28} {r['rss_model_mib']:10.0f} {r['peak_rss_mib']:10.0f} {r['step_peak_mib']:10.0f} {r['tokens_per_s']:12.0f}")
PY
  done
done
