#!/usr/bin/env bash
# The CUDA backend's tests and benchmark on a lent GPU machine, in two steps.
#
# The GPU machine is bare and offline (nvcc, CUDA libraries and a driver, but no gRPC,
# protobuf, abseil, GoogleTest or OpenBLAS), so the binaries are built HERE and travel with
# every shared library they load (glibc and its loader included, so the machine's own glibc
# version does not matter) in the git-ignored folder .gpu-carry/. Only the driver (libcuda)
# and cuBLAS (libcublas/libcublasLt, 600 MB) are taken from the GPU machine (/usr/local/cuda).
#
#   1. here:          scripts/gpu-check.sh bundle
#   2. on the GPU:    the device tool's run call, from the repository root:
#        run(command="bash scripts/gpu-check.sh run", carry=[".gpu-carry"], timeout_s=600)
#      Results come back under $OUT: tests.log, bench.log, bench.json, device.txt.
#
# Options of `run` (environment): GPU_CHECK_BENCH_ARGS (default: all three shapes, batches
# 1..256, shares 0/12.5/25/37.5), GPU_CHECK_SKIP_BENCH=1. SmolLM2's GGUF (94 MiB) is over the
# 64 MiB a call can carry, so its whole-model test runs only where KVSHARE_SMOLLM2_GGUF points
# to a copy on that machine; stories260K travels in .gpu-carry/assets.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARRY="$ROOT/.gpu-carry"
BUILD="${GPU_CHECK_BUILD_DIR:-$ROOT/build-cuda}"
BINS=(tests/cuda_ops_test tests/cuda_model_test tests/device_backend_test bench/cuda_bench)

bundle() {
  if [[ ! -f "$BUILD/build.ninja" ]]; then
    cmake -S "$ROOT" -B "$BUILD" -G Ninja -DKVSHARE_CUDA=ON
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
  cp /work/shared/assets/stories260K.bin /work/shared/assets/tok512.bin "$CARRY/assets/" 2>/dev/null ||
    cp "$ROOT/../shared/assets/stories260K.bin" "$ROOT/../shared/assets/tok512.bin" "$CARRY/assets/"
  du -sh "$CARRY"
  echo "bundled; now: run(command=\"bash scripts/gpu-check.sh run\", carry=[\".gpu-carry\"], timeout_s=600)"
}

run() {
  local out="${OUT:-$ROOT/out}"
  mkdir -p "$out"
  local lib="$CARRY/lib" cuda_lib=/usr/local/cuda/lib64
  [[ -d "$cuda_lib" ]] || cuda_lib=/usr/local/cuda/lib
  # The carried loader runs each binary against the carried libraries, then the machine's.
  local path="$lib:$cuda_lib:/usr/local/nvidia/lib64:/usr/lib/x86_64-linux-gnu"
  export KVSHARE_CUDA_PLUGIN="$lib/libkvshare_cuda.so" KVSHARE_ASSETS="$CARRY/assets"
  local loader=("$lib/ld-linux-x86-64.so.2" --library-path "$path")
  { nvidia-smi || true; } >"$out/device.txt" 2>&1
  local filter='*'
  [[ -n "${KVSHARE_SMOLLM2_GGUF:-}" ]] || filter='-*smollm2*'
  set +e
  {
    for t in device_backend_test cuda_ops_test cuda_model_test; do
      echo "=== $t"
      timeout 280 "${loader[@]}" "$CARRY/bin/$t" --gtest_filter="$filter"
      echo "=== $t exit $?"
    done
  } 2>&1 | tee "$out/tests.log"
  if [[ "${GPU_CHECK_SKIP_BENCH:-0}" != 1 ]]; then
    # shellcheck disable=SC2086
    timeout 300 "${loader[@]}" "$CARRY/bin/cuda_bench" ${GPU_CHECK_BENCH_ARGS:-} \
      --json "$out/bench.json" 2>&1 | tee "$out/bench.log"
  fi
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |=== .* exit" "$out/tests.log" || true
}

case "${1:-}" in
  bundle) bundle ;;
  run) run ;;
  *) echo "usage: $0 bundle|run   (see the header)"; exit 2 ;;
esac
