#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser (fuzz/README.md): builds the libFuzzer targets with
# clang + ASan + UBSan into ${BUILD_DIR:-build-fuzz}, seeds each from the repository's fixtures,
# runs each for a fixed time and prints executions, coverage and findings per target.
#   bash scripts/fuzz.sh [--time-per-target 60|10m|1h] [--runs N] [--jobs J] [--targets safetensors,recipe] [--no-build]
# --runs N stops a target after N executions (or at its time limit, whichever comes first);
# --jobs J fuzzes J targets at once (one process each). Findings are copied into
# tests/fuzz/corpus/<target>/ (ctest fuzz_replay then replays them in every build); the exit
# status is 1 when there is any. A report lands in BUILD_DIR/fuzz_report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TIME=60
TARGETS=""
BUILD=1
RUNS=0
JOBS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --time-per-target) TIME=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
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
for t in ${TARGETS//,/ }; do
  [ -x "$B/fuzz_$t" ] || { echo "fuzz.sh: no target $t (have: $(all_targets | tr '\n' ' '))" >&2; exit 2; }
done
# One target: the regression inputs first (each must pass), then the campaign over corpus + seeds;
# writes findings/<target>.json (its row of the report).
fuzz_one() {
  local t=$1 bin="$B/fuzz_$t" corpus="$B/corpus/$t" findings="$B/findings/$t" reg="$ROOT/tests/fuzz/corpus/$t"
  mkdir -p "$corpus" "$findings" "$reg"
  # Findings of an earlier run are already in the regression corpus: count this run's only.
  rm -f "$findings"/crash-* "$findings"/leak-* "$findings"/timeout-* "$findings"/oom-*
  local dict=""; [ -f "$B/seeds/$t.dict" ] && dict="-dict=$B/seeds/$t.dict"
  local log="$B/findings/$t.log" runs=""; [ "$RUNS" -gt 0 ] && runs="-runs=$RUNS"
  local t0; t0=$(date +%s)
  set +e
  "$bin" -runs=0 "$reg" >"$log.replay" 2>&1
  local rc_replay=$?
  "$bin" -max_total_time="$TIME" $runs -timeout=25 -rss_limit_mb=6144 -malloc_limit_mb=6144 -max_len=65536 \
         -print_final_stats=1 -artifact_prefix="$findings/" $dict "$corpus" "$B/seeds/$t" >"$log" 2>&1
  set -e
  local secs=$(( $(date +%s) - t0 ))
  local execs rate cov n=0
  execs=$(grep -a -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -a -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  cov=$(grep -a -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
  for f in "$findings"/crash-* "$findings"/leak-* "$findings"/timeout-* "$findings"/oom-*; do
    [ -e "$f" ] || continue
    n=$((n + 1)); cp "$f" "$reg/"
  done
  [ $rc_replay = 0 ] || { echo "fuzz.sh: $t fails on a saved regression input (see $log.replay)" >&2; n=$((n + 1)); }
  printf '%-20s %10s %8s %8s %9s\n' "$t" "${execs:-0}" "${rate:-0}" "${cov:-0}" "$n"
  echo "{\"target\":\"$t\",\"seconds\":$secs,\"executions\":${execs:-0},\"exec_per_sec\":${rate:-0},\"coverage\":${cov:-0},\"findings\":$n}" \
    >"$B/findings/$t.json"
}
printf '%-20s %10s %8s %8s %9s\n' target execs exec/s cov findings
running=0
for t in ${TARGETS//,/ }; do
  rm -f "$B/findings/$t.json"
  fuzz_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
done
wait || true
found=0
report="["
for t in ${TARGETS//,/ }; do
  row=$(cat "$B/findings/$t.json" 2>/dev/null || echo "{\"target\":\"$t\",\"findings\":1,\"error\":\"no result\"}")
  found=$((found + $(echo "$row" | python3 -c 'import json,sys; print(json.load(sys.stdin)["findings"])')))
  report="$report$row,"
done
echo "${report%,}]" > "$B/fuzz_report.json"
echo "report: $B/fuzz_report.json; logs: $B/findings/<target>.log"
if [ $found -gt 0 ]; then
  echo "fuzz.sh: $found finding(s), copied into tests/fuzz/corpus/<target>/ (replayed by ctest fuzz_replay)" >&2
  exit 1
fi
