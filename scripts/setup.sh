#!/usr/bin/env bash
# Installs every Debian package peft.cpp needs. Idempotent: does nothing when all are present.
#   libtorch-dev         LibTorch 1.13 (tensors, autograd, optimizers)
#   libopenblas0-pthread BLAS for LibTorch's matmuls (~30x faster than the reference BLAS)
#   nlohmann-json3-dev   config.json / adapter_config.json / safetensors headers
#   libsentencepiece-dev SentencePiece .model tokenizers (Llama, T5)
#   libgtest-dev         unit tests;  libbenchmark-dev  bench/
#   libgloo-dev          c10d Gloo backend for CPU distributed training
#   libcpp-httplib-dev   HTTP/1.1 server and client for `peft serve` (docs/SERVE.md) and its tests
#   libtcmalloc-minimal4 tcmalloc, the peft executable's malloc (docs/PRECISION.md: less
#                        fragmentation than glibc's heap, measured 0.79x the peak RSS, +10% speed)
#   ccache cmake g++ pkg-config   build tools
set -euo pipefail
PKGS="libtorch-dev libopenblas0-pthread nlohmann-json3-dev libsentencepiece-dev libgtest-dev \
libbenchmark-dev libgloo-dev libcpp-httplib-dev libtcmalloc-minimal4 ccache cmake g++ pkg-config"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y --no-install-recommends $missing || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends $missing; }
fi
