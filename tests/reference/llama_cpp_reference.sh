#!/usr/bin/env bash
# llama.cpp's figures for the test models (issue 20 item 4), into
# tests/reference/llama_cpp_reference.json (checked in; tests/engine/llama_cpp_agreement_test.cc
# reads it): per GGUF, the mean NLL of the first 512 tokens of WikiText-2 test (and 1024 for
# Gemma 3, where local layers' 512-token window cuts) and the greedy continuation of 3 prompts.
# Compiles llama_cpp_reference.cpp against the libllama that make_test_models.sh builds (same
# llama.cpp as ../shared/tools/llama-bench.sh). Takes ~10 minutes on 2 loaded cores.
# Usage: bash tests/reference/llama_cpp_reference.sh   (after make_test_models.sh)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
V=0.3.36
OUT=${KVSHARE_TEST_MODELS:-$HOME/.cache/kvshare/models}
SRC=${KVSHARE_LLAMA_CPP_SRC:-$HOME/.cache/kvshare/lcpp}
D=$SRC/llama_cpp_python-$V/vendor/llama.cpp
WIKI=${KVSHARE_WIKITEXT:-$HERE/../../../shared/assets/wikitext-2-raw-test.txt}
BIN=$OUT/bin/llama_cpp_reference
g++ -O2 -std=c++17 "$HERE/llama_cpp_reference.cpp" -I"$D/include" -I"$D/ggml/include" \
  -L"$D/build/bin" -lllama -lggml -lggml-base -Wl,-rpath,"$D/build/bin" -o "$BIN"
PROMPTS=("The capital of France is" "def fibonacci(n):" "The history of the Roman Empire")
TMP=$(mktemp -d)
run() {  # name file counts
  "$BIN" "$OUT/$2" "$WIKI" "$3" 32 "${PROMPTS[@]}" > "$TMP/$1.json"
  python3 - "$TMP/$1.json" "$OUT/$2" "$2" <<'PY'
import hashlib, json, sys
d = json.load(open(sys.argv[1]))
d["file"] = sys.argv[3]
d["sha256"] = hashlib.sha256(open(sys.argv[2], "rb").read()).hexdigest()
json.dump(d, open(sys.argv[1], "w"))
PY
}
run gemma3 gemma-3-270m-q4_k_m.gguf 512,1024
for q in q4_k_m q5_k_m q6_k q8_0; do run "smollm2_$q" "smollm2-$q.gguf" 512; done
python3 - "$TMP" "$HERE/llama_cpp_reference.json" "$V" <<'PY'
import glob, json, os, sys
models = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(sys.argv[1] + "/*.json"))}
out = {"description": "llama.cpp (llama-cpp-python " + sys.argv[3] + " sources) on the same GGUFs: "
       "mean NLL over every position of the first n_tokens of WikiText-2 test (BOS as the file "
       "says, one causal pass) and greedy continuations with top1-top2 logit margins",
       "script": "tests/reference/llama_cpp_reference.sh", "models": models}
with open(sys.argv[2], "w") as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
    f.write("\n")
PY
rm -r "$TMP"
echo "wrote $HERE/llama_cpp_reference.json"
