#!/usr/bin/env bash
# The README's test command: set up, build, and run every check and test.
#   0. the test models (tests/reference/make_test_models.sh, cached under ~/.cache/kvshare);
#   1. static checks: the dependency rule (scripts/check_deps.py) and clang-format;
#   2. every test (ctest), extra arguments passed to ctest;
#   3. clang's thread-safety analysis over the libraries and services;
#   4. the fuzz targets, each for KVSHARE_FUZZ_SECONDS (default 30) under ASan/UBSan.
# KVSHARE_SKIP_EXTRA_CHECKS=1 runs steps 1-2 only (e.g. in a sanitizer build folder).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "[test] test models (llama.cpp re-quantisations, vocabularies; cached)"
bash tests/reference/make_test_models.sh >/dev/null
export KVSHARE_REQUIRE_TEST_MODELS=1  # a test that needs one of them fails instead of skipping

echo "[test] dependency rule"
python3 scripts/check_deps.py --self-test
python3 scripts/check_deps.py
echo "[test] clang-format"
git ls-files '*.cc' '*.h' '*.cu' '*.cuh' | xargs clang-format --dry-run --Werror
echo "[test] clang-format: clean"

BUILD_DIR=${KVSHARE_BUILD_DIR:-build}
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" "$@"

if [ "${KVSHARE_SKIP_EXTRA_CHECKS:-0}" != 1 ]; then
  echo "[test] thread-safety analysis (clang)"
  bash scripts/check_thread_safety.sh "$BUILD_DIR"
  echo "[test] fuzz targets"
  bash scripts/fuzz.sh
fi
