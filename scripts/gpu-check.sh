#!/usr/bin/env bash
# The CUDA backend's tests and a trimmed benchmark on a lent GPU machine (issue 24).
#
# The GPU machine is bare and offline (nvcc, CUDA libraries and a driver, but no gRPC,
# protobuf, abseil, GoogleTest or OpenBLAS), so the binaries are built HERE and travel with
# every shared library they load (glibc and its loader included, so the machine's own glibc
# version does not matter) in the git-ignored folder .gpu-carry/. Only the driver (libcuda)
# and cuBLAS (libcublas/libcublasLt, 600 MB) are taken from the GPU machine: from the CUDA
# toolkit directory or from the Python `nvidia` packages' lib folders, wherever they are.
#
#   1. here:          scripts/gpu-check.sh bundle
#   2. on the GPU:    the device tool's run call, from the repository root:
#        run(command="bash scripts/gpu-check.sh run", carry=[".gpu-carry"], timeout_s=420)
#   3. here, any time: scripts/gpu-check.sh dry-run   (also a ctest: gpu_check_dry_run_test)
#
# `run` fits one command: the steps below have a time budget each (seconds), tests first, and
# the whole run stops by TOTAL_BUDGET (6 minutes) even when the steps' budgets are not used up.
# Each step appends its one-line verdict to $OUT/summary.txt the moment it ends, and its full
# output goes to $OUT/<step>.log as it is written, so a kill loses only the running step.
# $OUT also gets device.txt (nvidia-smi, driver) and libs.txt (where every library of the
# plugin resolved, and which cuBLAS candidates exist).
#
# It cannot report success without having run the CUDA tests: it exports
# KVSHARE_REQUIRE_CUDA=1, under which a CUDA test that would skip (no driver, no device, no
# cuBLAS, no plugin) fails instead (tests/cuda/cuda_test_util.h), and a test step passes only
# when gtest reports at least one passed test and no skipped one. The exit status is 0 only
# when every step passed. `run` options (environment): GPU_CHECK_SKIP_BENCH=1. SmolLM2's GGUF
# (94 MiB) is over the 64 MiB a call can carry, so its whole-model test runs only where
# KVSHARE_SMOLLM2_GGUF points to a copy on that machine; stories260K travels in .gpu-carry.
#
# `dry-run` runs here without a GPU: it checks the budget table, then runs `run` itself against
# the local build with every device hidden and checks that each CUDA step FAILED (not passed,
# not skipped), that every step has its summary line, and that a step over its budget is killed
# on time and recorded as TIMEOUT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="$ROOT/.gpu-carry"
BUILD="${GPU_CHECK_BUILD_DIR:-$ROOT/build-cuda}"
STDBUF_LIB=/usr/libexec/coreutils/libstdbuf.so
BINS=(tests/cuda_ops_test tests/cuda_batched_ops_test tests/cuda_model_test tests/device_backend_test
  bench/cuda_bench)

# The run's steps, in order: name, kind (test | bench), budget in seconds, arguments.
TOTAL_BUDGET=360  # seconds for the whole run: under 6 minutes
TESTS_BUDGET=180  # the test steps together: under 3 minutes
STEPS=(
  "device_backend_test|test|15|"
  "cuda_ops_test|test|70|"
  "cuda_batched_ops_test|test|30|"
  "cuda_model_test|test|65|"
  "bench_smollm2|bench|60|--models smollm2-135m --batches 1,32 --shares 0,25 --prompt 128 --steps 16"
  "bench_7b|bench|110|--models llama2-7b --batches 1,32 --shares 0,25 --prompt 128 --steps 16"
)

bundle() {
  if [[ ! -f "$BUILD/build.ninja" ]]; then
    cmake -S "$ROOT" -B "$BUILD" -G Ninja -DKVSHARE_CUDA=ON -DKVSHARE_BUILD_BENCH=ON
  fi
  nice -n 15 ninja -C "$BUILD" -j"${JOBS:-2}" kvshare_cuda "${BINS[@]##*/}"
  rm -rf "$CARRY"
  mkdir -p "$CARRY/bin" "$CARRY/lib" "$CARRY/assets"
  for b in "${BINS[@]}"; do cp "$BUILD/$b" "$CARRY/bin/"; done
  cp "$BUILD/kernels/cuda/libkvshare_cuda.so" "$CARRY/lib/"
  # Every library they load, under its soname; not the driver, not cuBLAS/cudart (the GPU
  # machine's CUDA install has the ones matching its driver).
  for f in "$CARRY"/bin/* "$CARRY/lib/libkvshare_cuda.so"; do ldd "$f"; done |
    awk '/=>/ {print $1, $3}' | sort -u |
    while read -r soname path; do
      case "$soname" in
        libcuda.so*|libnvidia*|libcublas*|libcudart*) continue ;;
      esac
      [[ -f "$path" ]] && cp -L "$path" "$CARRY/lib/$soname"
    done
  cp -L /lib64/ld-linux-x86-64.so.2 "$CARRY/lib/"
  # coreutils' line-buffering preload, built against the carried glibc (the machine's own
  # stdbuf may need a newer one).
  [[ -f "$STDBUF_LIB" ]] && cp -L "$STDBUF_LIB" "$CARRY/lib/"
  cp /work/shared/assets/stories260K.bin /work/shared/assets/tok512.bin "$CARRY/assets/" 2>/dev/null ||
    cp "$ROOT/../shared/assets/stories260K.bin" "$ROOT/../shared/assets/tok512.bin" "$CARRY/assets/"
  du -sh "$CARRY"
  echo "bundled; now: run(command=\"bash scripts/gpu-check.sh run\", carry=[\".gpu-carry\"], timeout_s=420)"
}

# Folders that may hold cuBLAS (and libcuda), in the order the loader should search them: the
# CUDA toolkit's, then every Python `nvidia` package's lib folder (pip's nvidia-cublas-cu12,
# nvidia-cublas / cu13 wheels), then the driver's usual places.
library_dirs() {
  local d
  for d in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda /usr/local/cuda-*; do
    [[ -n "$d" ]] || continue
    for sub in lib64 lib targets/x86_64-linux/lib; do
      [[ -d "$d/$sub" ]] && echo "$d/$sub"
    done
  done
  local py
  for py in python3 /usr/bin/python3 /usr/local/bin/python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    "$py" - <<'EOF' 2>/dev/null || true
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()] + sys.path)
for r in sorted(x for x in roots if x and os.path.isdir(os.path.join(x, "nvidia"))):
    for lib in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib")) +
                      glob.glob(os.path.join(r, "nvidia", "cu*", "lib64"))):
        print(lib)
EOF
    break
  done
  for d in /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64 /lib/x86_64-linux-gnu; do
    [[ -d "$d" ]] && echo "$d"
  done
}

# Appends one verdict line to the summary, at once (a kill after this loses nothing of it).
note() { echo "$*" | tee -a "$SUMMARY"; }

# Runs one step under its budget, clipped to what is left of TOTAL_BUDGET; writes its log and
# its summary line. Sets FAILED=1 unless the step passed.
run_step() {
  local name="$1" kind="$2" budget="$3" args="$4"
  local left=$((DEADLINE - SECONDS))
  ((budget > left)) && budget=$left
  if ((budget <= 0)); then
    note "$(printf '%-22s NOT RUN (the %ds total budget is spent)' "$name" "$TOTAL_BUDGET")"
    FAILED=1
    return
  fi
  local log="$OUT_DIR/$name.log" bin cmd=()
  case "$kind" in
    test) bin="$BIN_DIR/$name" ;;
    bench) bin="$BIN_DIR/cuda_bench" ;;
    sleep) bin=sleep ;;  # the dry-run's timeout probe
  esac
  if [[ "$kind" != sleep && ! -x "$bin" ]]; then
    note "$(printf '%-22s FAIL (no binary %s)' "$name" "$bin")"
    FAILED=1
    return
  fi
  case "$kind" in
    test) cmd=("${LOADER[@]}" "$bin" --gtest_filter="$GTEST_FILTER") ;;
    # shellcheck disable=SC2206
    bench) cmd=("${LOADER[@]}" "$bin" $args --json "$OUT_DIR/$name.json") ;;
    sleep) cmd=(sleep "$args") ;;
  esac
  local t0=$SECONDS rc=0
  # stdout line-buffered into the log (coreutils' libstdbuf preloaded into the binary only, not
  # into timeout or env), so a kill loses no finished line.
  local unbuffer=()
  [[ -n "$PRELOAD" && "$kind" != sleep ]] &&
    unbuffer=(env LD_PRELOAD="$PRELOAD" _STDBUF_O=L _STDBUF_E=L)
  set +e
  timeout -k 5 "$budget" "${unbuffer[@]}" "${cmd[@]}" >"$log" 2>&1
  rc=$?
  set -e
  local took=$((SECONDS - t0)) verdict detail=""
  if ((rc == 124 || rc == 137)); then
    verdict=TIMEOUT
    detail="killed at its ${budget}s budget"
  elif [[ "$kind" == test ]]; then
    local passed skipped failed
    passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
    skipped=$(grep -c '^\[  SKIPPED \] ' "$log" || true)
    failed=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$log" | tail -1)
    detail="rc $rc, ${passed:-0} passed, ${failed:-0} failed, $skipped skipped"
    if ((rc == 0)) && [[ "${passed:-0}" -gt 0 && "$skipped" == 0 ]]; then
      verdict=PASS
    else
      verdict=FAIL
    fi
  elif [[ "$kind" == bench ]]; then
    local rows
    rows=$(grep -cE '^[a-z0-9.-]+ +[0-9.]+% ' "$log" || true)
    detail="rc $rc, $rows rows"
    if ((rc == 0)) && ! grep -q 'no numbers' "$log" && ((rows > 0)); then
      verdict=PASS
    else
      verdict=FAIL
      grep -m1 'no numbers' "$log" >/dev/null && detail="$detail; $(grep -m1 'no numbers' "$log")"
    fi
  else
    verdict=PASS
    detail="rc $rc"
  fi
  [[ "$verdict" == PASS ]] || FAILED=1
  note "$(printf '%-22s %-7s %4ds  %s' "$name" "$verdict" "$took" "$detail")"
}

# The whole run. In a dry run (DRY=1) the binaries are the local build's, run by the system's
# loader, and the caller hides the devices.
run() {
  OUT_DIR="${OUT:-$ROOT/out}"
  mkdir -p "$OUT_DIR"
  SUMMARY="$OUT_DIR/summary.txt"
  : >"$SUMMARY"
  DEADLINE=$((SECONDS + TOTAL_BUDGET))
  FAILED=0
  local dirs path
  dirs="$(library_dirs | awk '!seen[$0]++' | paste -sd:)"
  if [[ "${DRY:-0}" == 1 ]]; then
    BIN_DIR="$OUT_DIR/bin"
    mkdir -p "$BIN_DIR"
    for b in "${BINS[@]}"; do [[ -x "$BUILD/$b" ]] && ln -sf "$BUILD/$b" "$BIN_DIR/"; done
    export KVSHARE_CUDA_PLUGIN="$BUILD/kernels/cuda/libkvshare_cuda.so"
    LOADER=()
    PRELOAD=""
    [[ -f "$STDBUF_LIB" ]] && PRELOAD="$STDBUF_LIB"
  else
    BIN_DIR="$CARRY/bin"
    local lib="$CARRY/lib"
    path="$lib:$dirs"
    export KVSHARE_CUDA_PLUGIN="$lib/libkvshare_cuda.so" KVSHARE_ASSETS="$CARRY/assets"
    # The carried loader runs each binary against the carried libraries, then the machine's.
    LOADER=("$lib/ld-linux-x86-64.so.2" --library-path "$path")
    PRELOAD=""
    [[ -f "$lib/libstdbuf.so" ]] && PRELOAD="$lib/libstdbuf.so"
  fi
  export KVSHARE_REQUIRE_CUDA=1 KVSHARE_REQUIRE_TEST_MODELS=1
  GTEST_FILTER='*'
  [[ -n "${KVSHARE_SMOLLM2_GGUF:-}" ]] || GTEST_FILTER='-*smollm2*'

  note "gpu-check $(date -u +%FT%TZ): budget ${TOTAL_BUDGET}s (tests ${TESTS_BUDGET}s), filter $GTEST_FILTER"
  {
    timeout 10 nvidia-smi || echo "nvidia-smi: not available (rc $?)"
    echo "--- driver"
    cat /proc/driver/nvidia/version 2>/dev/null || echo "no /proc/driver/nvidia/version"
  } >"$OUT_DIR/device.txt" 2>&1 || true
  {
    echo "search path: ${path:-$dirs}"
    echo "--- cuBLAS / driver candidates"
    local d
    for d in ${dirs//:/ }; do
      ls "$d"/libcublas.so* "$d"/libcublasLt.so* "$d"/libcuda.so* 2>/dev/null || true
    done
    echo "--- libcuda.so.1 (the driver, dlopen'ed by the static CUDA runtime): first on the path"
    local found=""
    for d in ${dirs//:/ }; do
      if [[ -e "$d/libcuda.so.1" ]]; then
        found="$d/libcuda.so.1 -> $(readlink -f "$d/libcuda.so.1")"
        break
      fi
    done
    echo "libcuda.so.1 => ${found:-not found on the path; ldconfig: $(ldconfig -p 2>/dev/null | grep -m1 'libcuda.so.1 ' || echo none)}"
    echo "--- where the plugin's libraries resolve"
    if ((${#LOADER[@]})); then
      "${LOADER[@]}" --list "$KVSHARE_CUDA_PLUGIN" || echo "(unresolved: rc $?)"
    else
      ldd "$KVSHARE_CUDA_PLUGIN" || echo "(unresolved: rc $?)"
    fi
  } >"$OUT_DIR/libs.txt" 2>&1 || true
  grep -E 'libcublas|libcuda|not found' "$OUT_DIR/libs.txt" | grep -E '=>|not found' |
    sed 's/^/  lib: /' | tee -a "$SUMMARY" || true

  local step name kind budget args
  for step in "${STEPS[@]}" ${EXTRA_STEPS:+"${EXTRA_STEPS[@]}"}; do
    IFS='|' read -r name kind budget args <<<"$step"
    if [[ "$kind" == bench && "${GPU_CHECK_SKIP_BENCH:-0}" == 1 ]]; then
      note "$(printf '%-22s SKIPPED (GPU_CHECK_SKIP_BENCH=1)' "$name")"
      continue
    fi
    run_step "$name" "$kind" "$budget" "$args"
  done
  if ((FAILED)); then
    note "VERDICT: FAIL ($((SECONDS - DEADLINE + TOTAL_BUDGET))s)"
    return 1
  fi
  note "VERDICT: PASS ($((SECONDS - DEADLINE + TOTAL_BUDGET))s)"
}

# Checks the budget table, then runs `run` here with every device hidden.
dry_run() {
  local tests=0 total=0 step name kind budget args
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name kind budget args <<<"$step"
    total=$((total + budget))
    [[ "$kind" == test ]] && tests=$((tests + budget))
  done
  echo "dry-run: step budgets: tests ${tests}s (limit ${TESTS_BUDGET}s), all ${total}s (limit ${TOTAL_BUDGET}s)"
  if ((tests > TESTS_BUDGET || total > TOTAL_BUDGET || TOTAL_BUDGET > 400)); then
    echo "dry-run: FAIL: the budget table is over its limits (a run call has 600 s, the device 15 min)"
    return 1
  fi
  local out
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' RETURN
  local rc=0
  # No device: CUDA_VISIBLE_DEVICES hides any GPU this machine has.
  # A 1 s step that sleeps 30 s checks that budgets are enforced.
  EXTRA_STEPS=("timeout_probe|sleep|1|30")
  OUT="$out" DRY=1 CUDA_VISIBLE_DEVICES="" run >"$out/run.txt" 2>&1 || rc=$?
  cat "$out/run.txt"
  local bad=0
  ((rc != 0)) || { echo "dry-run: FAIL: run exited 0 without a GPU"; bad=1; }
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name kind budget args <<<"$step"
    local line
    line=$(grep -E "^$name " "$out/summary.txt" || true)
    if [[ -z "$line" ]]; then
      echo "dry-run: FAIL: no summary line for $name"
      bad=1
    elif [[ "$kind" == test ]] && ! grep -qE "^$name +FAIL " <<<"$line"; then
      echo "dry-run: FAIL: $name did not FAIL without a device: $line"
      bad=1
    fi
  done
  if ! grep -qE '^timeout_probe +TIMEOUT +[0-9]s ' "$out/summary.txt"; then
    echo "dry-run: FAIL: a step over its 1 s budget was not killed within 9 s"
    bad=1
  fi
  grep -q '^VERDICT: FAIL' "$out/summary.txt" || { echo "dry-run: FAIL: no FAIL verdict"; bad=1; }
  # The switch itself: without it a test binary skips and exits 0; with it, it fails.
  local t="$BUILD/tests/cuda_ops_test"
  if [[ -x "$t" ]]; then
    if ! CUDA_VISIBLE_DEVICES="" KVSHARE_REQUIRE_CUDA=0 "$t" --gtest_filter='*Rope*' >"$out/s.txt" 2>&1 ||
      ! grep -q '^\[  SKIPPED \] ' "$out/s.txt"; then
      echo "dry-run: FAIL: without KVSHARE_REQUIRE_CUDA cuda_ops_test should skip and pass"
      bad=1
    fi
    if CUDA_VISIBLE_DEVICES="" KVSHARE_REQUIRE_CUDA=1 "$t" --gtest_filter='*Rope*' >"$out/f.txt" 2>&1; then
      echo "dry-run: FAIL: with KVSHARE_REQUIRE_CUDA=1 cuda_ops_test passed without a device"
      bad=1
    fi
  fi
  if ((bad)); then return 1; fi
  echo "dry-run: OK (the run fails without a GPU, every step is summarised, budgets are enforced)"
}

case "${1:-}" in
  bundle) bundle ;;
  run) run ;;
  dry-run) dry_run ;;
  *) echo "usage: $0 bundle|run|dry-run   (see the header)"; exit 2 ;;
esac
