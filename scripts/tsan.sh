#!/usr/bin/env bash
# ThreadSanitizer run of the code that owns threads: both services, the scheduler, the strategy
# holder and subscriber, and the fleet (search service + workers as processes). Builds into
# build-tsan/ with -DKVSHARE_SANITIZE=thread; extra arguments go to ctest.
#   bash scripts/tsan.sh            # the default selection below
#   bash scripts/tsan.sh -R sched   # a narrower one
# Limit, measured 2026-12-06: Debian's abseil and gRPC are not built with -fsanitize=thread, so
# TSan cannot see absl::Mutex's lock/unlock edges and reports accesses that are guarded by an
# absl::Mutex (e.g. Scheduler::Submit and HasWork, both under mu_) and gRPC's poller as races:
# 31 reports over 17 tests, all of that kind. A clean run needs abseil and gRPC built with TSan.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${KVSHARE_TSAN_BUILD_DIR:-build-tsan}
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVSHARE_SANITIZE=thread \
  -DKVSHARE_CUDA=OFF -DKVSHARE_BUILD_BENCH=OFF "${launcher[@]}" >/dev/null
# halt_on_error: a race fails the test that found it (the report is in its output).
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
SELECTION='admission|batching|generate_stream|health|scheduler|strategy_holder|validation|worker_process|search_server|search_hooks|search_service_crash|strategy_store|fleet_rollout|rollout_policy'
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(-R "$SELECTION")
cmake --build "$BUILD_DIR" -j "$(nproc)"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" "${args[@]}"
