#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) with clang, ASan and UBSan into build-fuzz/, writes
# their seed corpora from ../shared/assets, and runs each target for a fixed time. Fails on the
# first crash, leak, hang or sanitizer report; the input that caused it is left in
# build-fuzz/artifacts/ and its path printed.
#   KVSHARE_FUZZ_SECONDS   seconds per target (default 30)
#   KVSHARE_FUZZ_BUILD_DIR build folder (default build-fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${KVSHARE_FUZZ_SECONDS:-30}
BUILD_DIR=${KVSHARE_FUZZ_BUILD_DIR:-build-fuzz}
TARGETS=(gguf_fuzz llama2c_fuzz tokenizer_fuzz strategy_json_fuzz)

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKVSHARE_FUZZ=ON -DKVSHARE_SANITIZE=ON -DKVSHARE_CUDA=OFF -DKVSHARE_BUILD_TESTS=OFF \
  -DKVSHARE_BUILD_BENCH=OFF "${launcher[@]}" >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target "${TARGETS[@]}" fuzz_seeds

CORPUS="$BUILD_DIR/corpus"
ARTIFACTS="$BUILD_DIR/artifacts"
rm -rf "$CORPUS" && mkdir -p "$ARTIFACTS"
"$BUILD_DIR/tests/fuzz/fuzz_seeds" "$CORPUS/seeds"

seed_dir() {
  case "$1" in
    gguf_fuzz) echo gguf ;; llama2c_fuzz) echo llama2c ;;
    tokenizer_fuzz) echo tokenizer ;; strategy_json_fuzz) echo strategy ;;
  esac
}
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
status=0
for t in "${TARGETS[@]}"; do
  work="$CORPUS/$t"
  mkdir -p "$work"
  log="$BUILD_DIR/$t.log"
  echo "[fuzz] $t: ${SECONDS_PER_TARGET}s from seeds/$(seed_dir "$t")"
  # -max_len fits the largest seed (stories260K, about 1 MB) so mutations of it stay whole.
  if "$BUILD_DIR/tests/fuzz/$t" "$work" "$CORPUS/seeds/$(seed_dir "$t")" \
      -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=4096 \
      -max_len=1200000 -artifact_prefix="$ARTIFACTS/$t-" -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "[fuzz] $t: clean, $runs inputs"
  else
    echo "[fuzz] $t: FAILED; last lines of $log:"
    tail -30 "$log"
    ls "$ARTIFACTS"/"$t"-* 2>/dev/null | sed 's/^/[fuzz] reproducer: /'
    status=1
  fi
done
exit $status
