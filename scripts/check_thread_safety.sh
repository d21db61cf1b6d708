#!/usr/bin/env bash
# Clang's thread-safety analysis over every translation unit of the project's libraries and
# services: the ABSL_GUARDED_BY / ABSL_EXCLUSIVE_LOCKS_REQUIRED annotations are no-ops under g++,
# so this is what makes them promises. Each TU is compiled with its own flags from the build's
# compile_commands.json, by clang++ with -fsyntax-only (no code generated) and
# -Wthread-safety -Werror=thread-safety. Fails listing the first errors of each failing TU.
#   scripts/check_thread_safety.sh [BUILD_DIR]   (default: build; must have been built, for the
#                                                 generated protobuf headers)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-${KVSHARE_BUILD_DIR:-build}}
CLANGXX=${CLANGXX:-$(command -v clang++ || command -v clang++-14 || true)}
if [ -z "$CLANGXX" ]; then
  echo "check_thread_safety: clang++ not found (Debian package clang)" >&2
  exit 1
fi
DB="$BUILD_DIR/compile_commands.json"
[ -f "$DB" ] || { echo "check_thread_safety: $DB missing: configure and build first" >&2; exit 1; }

LIST=$(mktemp)
trap 'rm -f "$LIST"' EXIT
# One line per TU: directory, then the g++ command rewritten for clang (launcher and output
# dropped). Only the layers that own threads and locks; tests, benches and CUDA are not run.
python3 - "$DB" "$CLANGXX" >"$LIST" <<'EOF'
import json, shlex, sys
db, clang = sys.argv[1], sys.argv[2]
layers = ("kernels/", "common/", "search_service/", "inference_service/", "service_runtime/",
          "proto/wire/", "tools/")
for e in json.load(open(db)):
    f = e["file"]
    if not f.endswith(".cc") or "/kernels/cuda/" in f or "/gen/" in f:
        continue
    if not any("/" + l in f for l in layers) or "/tests/" in f or "/bench/" in f:
        continue
    args = e.get("arguments") or shlex.split(e["command"])
    while args and ("ccache" in args[0] or not args[0].endswith(("g++", "c++", "clang++"))):
        args = args[1:]
    out, skip = [clang], False
    for a in args[1:]:
        if skip:
            skip = False
            continue
        if a == "-o":
            skip = True
            continue
        if a == "-c":
            continue
        out.append(a)
    out += ["-fsyntax-only", "-Wthread-safety", "-Werror=thread-safety", "-Wno-unknown-warning-option"]
    print(e["directory"] + "\t" + " ".join(shlex.quote(a) for a in out))
EOF

total=$(wc -l <"$LIST")
echo "check_thread_safety: $total translation units, clang $("$CLANGXX" -dumpversion)"
fail=0
run_one() {
  local dir=${1%%$'\t'*} cmd=${1#*$'\t'}
  local log
  if ! log=$(cd "$dir" && eval "$cmd" 2>&1); then
    echo "$log" | grep -E "error:" | head -5
    return 1
  fi
}
export -f run_one
if ! tr '\n' '\0' <"$LIST" | xargs -0 -P "$(nproc)" -I{} bash -c 'run_one "$1"' _ {}; then
  fail=1
fi
if [ "$fail" -ne 0 ]; then
  echo "check_thread_safety: FAILED (errors above)"
  exit 1
fi
echo "check_thread_safety: clean"
