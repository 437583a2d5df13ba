#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser (fuzz/README.md): builds the libFuzzer targets with
# clang + ASan + UBSan into ${BUILD_DIR:-build-fuzz}, seeds each from the repository's fixtures,
# runs each for a fixed time and prints executions, coverage and findings per target.
#   bash scripts/fuzz.sh [--time-per-target 60|10m|1h] [--targets safetensors,recipe] [--no-build]
# Findings are copied into tests/fuzz/corpus/<target>/ (ctest fuzz_replay then replays them in
# every build); the exit status is 1 when there is any. A report lands in BUILD_DIR/fuzz_report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TIME=60
TARGETS=""
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --time-per-target) TIME=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n 2,8p "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$TIME" in
  *h) TIME=$(( ${TIME%h} * 3600 )) ;;
  *m) TIME=$(( ${TIME%m} * 60 )) ;;
  *s) TIME=${TIME%s} ;;
esac
BUILD_DIR=${BUILD_DIR:-build-fuzz}
if [ "$BUILD" = 1 ]; then
  bash scripts/setup.sh
  if ! command -v clang++ >/dev/null || ! dpkg-query -W -f='${Status}' libclang-rt-14-dev 2>/dev/null | grep -q "ok installed"; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get install -y --no-install-recommends clang libclang-rt-14-dev ||
      { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends clang libclang-rt-14-dev; }
  fi
  export CCACHE_BASEDIR="$PWD" CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
  # -O1: the usual fuzzing trade-off (OSS-Fuzz builds -O1), and half the compile time of -O3.
  # FUZZ_OPT=-O0 (CI's short smoke run) compiles faster still, at fewer executions per second.
  cmake -S . -B "$BUILD_DIR" -DCMAKE_CXX_COMPILER=clang++ -DPEFT_FUZZ=ON -DPEFT_BUILD_TESTS=OFF \
        -DPEFT_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="${FUZZ_OPT:--O1} -DNDEBUG" >/dev/null
  cmake --build "$BUILD_DIR" -j"$(nproc)"
fi
B="$ROOT/$BUILD_DIR"
all_targets() { find "$B" -maxdepth 1 -type f -executable -name 'fuzz_*' -printf '%f\n' | sed 's/^fuzz_//' | sort; }
[ -n "$TARGETS" ] || TARGETS=$(all_targets | tr '\n' ',')
python3 fuzz/make_seeds.py "$B/seeds"
export OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1
# LibTorch's own allocations are not leaks of ours; ASan's leak check at exit would report them.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
found=0
report="["
printf '%-20s %10s %8s %8s %9s\n' target execs exec/s cov findings
for t in ${TARGETS//,/ }; do
  bin="$B/fuzz_$t"
  [ -x "$bin" ] || { echo "fuzz.sh: no target $t (have: $(all_targets | tr '\n' ' '))" >&2; exit 2; }
  corpus="$B/corpus/$t"; findings="$B/findings/$t"; reg="$ROOT/tests/fuzz/corpus/$t"
  mkdir -p "$corpus" "$findings" "$reg"
  dict=""; [ -f "$B/seeds/$t.dict" ] && dict="-dict=$B/seeds/$t.dict"
  log="$B/findings/$t.log"
  # The regression inputs first (each must pass), then the timed campaign over corpus + seeds.
  set +e
  "$bin" -runs=0 "$reg" >"$log.replay" 2>&1
  rc_replay=$?
  "$bin" -max_total_time="$TIME" -timeout=25 -rss_limit_mb=6144 -malloc_limit_mb=6144 -max_len=65536 \
         -print_final_stats=1 -artifact_prefix="$findings/" $dict "$corpus" "$B/seeds/$t" >"$log" 2>&1
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  n=0
  for f in "$findings"/crash-* "$findings"/leak-* "$findings"/timeout-* "$findings"/oom-*; do
    [ -e "$f" ] || continue
    n=$((n + 1)); cp "$f" "$reg/"
  done
  [ $rc_replay = 0 ] || { echo "fuzz.sh: $t fails on a saved regression input (see $log.replay)" >&2; n=$((n + 1)); }
  found=$((found + n))
  printf '%-20s %10s %8s %8s %9s\n' "$t" "${execs:-0}" "${rate:-0}" "${cov:-0}" "$n"
  report="$report{\"target\":\"$t\",\"seconds\":$TIME,\"executions\":${execs:-0},\"exec_per_sec\":${rate:-0},\"coverage\":${cov:-0},\"findings\":$n},"
done
echo "${report%,}]" > "$B/fuzz_report.json"
echo "report: $B/fuzz_report.json; logs: $B/findings/<target>.log"
if [ $found -gt 0 ]; then
  echo "fuzz.sh: $found finding(s), copied into tests/fuzz/corpus/<target>/ (replayed by ctest fuzz_replay)" >&2
  exit 1
fi
