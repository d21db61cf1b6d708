#!/usr/bin/env bash
# The README's main job, end to end on one machine: set up, build, and chat with
# SmolLM2-135M-Instruct on the CPU engine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${KVSHARE_BUILD_DIR:-build}
KV="$BUILD_DIR/tools/kvshare"
echo "== model"
"$KV" info
echo
echo "== chat (greedy)"
"$KV" generate --chat --prompt "${1:-What is the capital of France?}" --max-tokens 64
