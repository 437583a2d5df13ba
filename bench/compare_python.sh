#!/usr/bin/env bash
# peft.cpp vs plain PyTorch in Python: the same Llama-architecture LoRA (and full fine-tuning)
# training step, run interleaved in one session. Installs Debian's python3-torch on demand (it is
# not part of scripts/setup.sh: CI stays lean) and uses /usr/bin/python3, which that package
# serves. Extra arguments go to `peft bench` (e.g. --small, --repeats 5, --out r.json).
#
#   bash bench/compare_python.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  echo "compare_python: installing python3-torch (Debian's PyTorch, for /usr/bin/python3)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends python3-torch ||
    { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends python3-torch; }
fi
BUILD_DIR=${BUILD_DIR:-build}
[ -x "$BUILD_DIR/peft" ] || BUILD_DIR="$BUILD_DIR" bash scripts/build.sh
exec "$BUILD_DIR/peft" bench --suites python --python /usr/bin/python3 \
  --python-script bench/pytorch_lora_step.py "$@"
