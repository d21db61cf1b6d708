#!/usr/bin/env python3
"""Independent numpy (float64) reference forward pass for llama2.c `stories260K.bin`.

Reads the legacy (v0) llama2.c checkpoint directly (no project code), checks the result against
the golden values in GOLDEN.md (argmax after BOS, greedy ids, mean NLL over the 512 section-3
ids) and writes tests/reference/stories260k_reference.json with:
  * the full logits (all vocab entries) at the last position of prompt ids 1 403 407 261 378,
  * the mean next-token NLL over the GOLDEN 512 ids, and the per-position NLL of the first 64
    positions (so a C++ test can localise an error).

Usage:
  python3 tests/reference/stories_reference.py [--assets ../shared/assets] [--out PATH]
"""
import os

# Small matrices: threading only costs; the machine is shared.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import hashlib
import json
import re
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PROMPT_IDS = [1, 403, 407, 261, 378]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Stories:
    """llama2.c legacy checkpoint, weights held as float64 arrays shaped (out, in)."""

    def __init__(self, path):
        raw = open(path, "rb").read()
        hdr = np.frombuffer(raw, dtype="<i4", count=7)
        dim, hidden, L, nh, nkv, vocab, seq_len = (int(v) for v in hdr)
        self.shared = vocab > 0
        vocab = abs(vocab)
        self.cfg = dict(dim=dim, hidden_dim=hidden, n_layers=L, n_heads=nh, n_kv_heads=nkv,
                        vocab_size=vocab, seq_len=seq_len)
        hs = dim // nh
        kv_dim = nkv * hs
        f = np.frombuffer(raw, dtype="<f4", offset=28).astype(np.float64)
        off = 0

        def take(*shape):
            nonlocal off
            n = int(np.prod(shape))
            a = f[off:off + n].reshape(shape)
            off += n
            return a

        self.tok = take(vocab, dim)
        self.rms_att = take(L, dim)
        self.wq = take(L, dim, dim)
        self.wk = take(L, kv_dim, dim)
        self.wv = take(L, kv_dim, dim)
        self.wo = take(L, dim, dim)
        self.rms_ffn = take(L, dim)
        self.w1 = take(L, hidden, dim)
        self.w2 = take(L, dim, hidden)
        self.w3 = take(L, hidden, dim)
        self.rms_final = take(dim)
        off += seq_len * hs // 2  # freq_cis_real
        off += seq_len * hs // 2  # freq_cis_imag
        self.wcls = self.tok if self.shared else take(vocab, dim)
        if off != f.size:
            raise SystemExit(f"checkpoint size mismatch: consumed {off} floats of {f.size}")
        self.dim, self.hidden, self.L, self.nh, self.nkv, self.hs = dim, hidden, L, nh, nkv, hs
        self.vocab, self.seq_len = vocab, seq_len
        self.eps = 1e-5  # llama2.c run.c rmsnorm

    @staticmethod
    def rmsnorm(x, w, eps):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def rope(self, x, pos):
        """x: (T, H, hs); llama2.c run.c: pair (i, i+1), freq = 10000^-((i % hs)/hs)."""
        i = np.arange(0, self.hs, 2, dtype=np.float64)
        freq = 1.0 / np.power(10000.0, i / self.hs)  # (hs/2,)
        ang = pos[:, None].astype(np.float64) * freq[None, :]  # (T, hs/2)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def forward(self, ids, cache=None):
        """Runs ids at positions len(cache)..; returns logits (T, vocab) and the cache."""
        if cache is None:
            cache = {"k": [np.zeros((0, self.nkv, self.hs))] * self.L,
                     "v": [np.zeros((0, self.nkv, self.hs))] * self.L, "n": 0}
        T = len(ids)
        p0 = cache["n"]
        pos = np.arange(p0, p0 + T)
        x = self.tok[np.asarray(ids)]
        g = self.nh // self.nkv
        for l in range(self.L):
            h = self.rmsnorm(x, self.rms_att[l], self.eps)
            q = (h @ self.wq[l].T).reshape(T, self.nh, self.hs)
            k = (h @ self.wk[l].T).reshape(T, self.nkv, self.hs)
            v = (h @ self.wv[l].T).reshape(T, self.nkv, self.hs)
            q, k = self.rope(q, pos), self.rope(k, pos)
            K = cache["k"][l] = np.concatenate([cache["k"][l], k])
            V = cache["v"][l] = np.concatenate([cache["v"][l], v])
            S = K.shape[0]
            Kh = np.repeat(K, g, axis=1)  # query head h -> kv head h // g
            Vh = np.repeat(V, g, axis=1)
            att = np.einsum("thd,shd->hts", q, Kh) / np.sqrt(self.hs)
            mask = np.arange(S)[None, :] > pos[:, None]
            att = np.where(mask[None], -np.inf, att)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", att, Vh).reshape(T, self.dim)
            x = x + o @ self.wo[l].T
            h = self.rmsnorm(x, self.rms_ffn[l], self.eps)
            a = h @ self.w1[l].T
            b = h @ self.w3[l].T
            x = x + ((a / (1.0 + np.exp(-a))) * b) @ self.w2[l].T
        cache["n"] = p0 + T
        x = self.rmsnorm(x, self.rms_final, self.eps)
        return x @ self.wcls.T, cache


def logsumexp(z):
    m = z.max(-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]


def parse_golden(path):
    text = open(path).read()
    m1 = re.search(r"Token ids \(BOS.*?\n`([\d ]+)`", text, re.S)
    greedy = [int(t) for t in m1.group(1).split()]
    m2 = re.search(r"## 3\..*?```\n(.*?)```", text, re.S)
    ids512 = [int(t) for t in m2.group(1).split()]
    m3 = re.search(r"after BOS alone is id (\d+).*?logit (\d+\.\d+)", text, re.S)
    m4 = re.search(r"\| tinystories-sample\.txt \|[^|]*\| ([\d.]+) \|", text)
    return dict(greedy_ids=greedy, ids512=ids512, bos_argmax=int(m3.group(1)),
                bos_logit=float(m3.group(2)), mean_nll=float(m4.group(1)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", default=os.path.join(os.path.dirname(REPO), "shared", "assets"))
    ap.add_argument("--out", default=os.path.join(HERE, "stories260k_reference.json"))
    args = ap.parse_args()
    t_start = time.time()
    model_path = os.path.join(args.assets, "stories260K.bin")
    golden_path = os.path.join(args.assets, "GOLDEN.md")
    m = Stories(model_path)
    gold = parse_golden(golden_path)
    ok = True
    report = {}

    # 1. argmax after BOS
    lg, _ = m.forward([1])
    a = int(np.argmax(lg[0]))
    report["bos_argmax"] = a
    report["bos_argmax_logit"] = float(lg[0, a])
    d = abs(lg[0, a] - gold["bos_logit"])
    print(f"argmax after BOS: {a} logit {lg[0, a]:.8f} (golden {gold['bos_argmax']} "
          f"{gold['bos_logit']:.6f}, |diff| {d:.2e})")
    ok &= a == gold["bos_argmax"] and d < 1e-5

    # 2. greedy: 32 positions from BOS, prompt forced, then argmax (KV cache)
    seq = list(gold["greedy_ids"][:5])
    lg, cache = m.forward(seq)
    nxt = int(np.argmax(lg[-1]))
    while len(seq) < len(gold["greedy_ids"]):
        seq.append(nxt)
        lg, cache = m.forward([nxt], cache)
        nxt = int(np.argmax(lg[-1]))
    match = seq == gold["greedy_ids"]
    print(f"greedy ids match GOLDEN: {match}")
    if not match:
        print("  got   ", " ".join(map(str, seq)))
        print("  golden", " ".join(map(str, gold["greedy_ids"])))
    ok &= match

    # 3. mean NLL over the 512 ids (positions 0..510, 511 targets)
    ids = gold["ids512"]
    assert len(ids) == 512, len(ids)
    lg, _ = m.forward(ids[:-1])
    nll = logsumexp(lg) - lg[np.arange(511), ids[1:]]
    mean_nll = float(nll.mean())
    dn = abs(mean_nll - gold["mean_nll"])
    print(f"mean NLL: {mean_nll:.9f} (golden {gold['mean_nll']:.9f}, |diff| {dn:.2e}); "
          f"ppl {np.exp(mean_nll):.6f}")
    ok &= dn < 1e-6

    # prompt logits at the last position
    lp, _ = m.forward(PROMPT_IDS)
    last = lp[-1]

    out = {
        "description": "float64 numpy reference forward for llama2.c stories260K.bin "
                       "(independent of the project's code)",
        "provenance": {
            "script": "tests/reference/stories_reference.py",
            "model_file": "stories260K.bin",
            "model_sha256": sha256(model_path),
            "golden_md_sha256": sha256(golden_path),
            "numpy_version": np.__version__,
            "python_version": sys.version.split()[0],
            "dtype": "float64 (fp32 weights widened to float64; all arithmetic float64)",
        },
        "config": dict(m.cfg, rms_eps=m.eps, rope_theta=10000.0,
                       rope="llama2.c run.c: adjacent pairs (2i,2i+1) per head, "
                            "freq = 10000^-(2i/head_size)", classifier="tied to token_embedding"),
        "golden_check": {
            "passed": bool(ok),
            "bos_argmax": a, "bos_argmax_logit": report["bos_argmax_logit"],
            "golden_bos_argmax_logit": gold["bos_logit"],
            "greedy_ids": seq, "greedy_ids_match": bool(match),
            "golden_mean_nll": gold["mean_nll"],
        },
        "prompt": {
            "ids": PROMPT_IDS,
            "position": len(PROMPT_IDS) - 1,
            "argmax": int(np.argmax(last)),
            "logsumexp": float(logsumexp(last)),
            "logits": [float(v) for v in last],
        },
        "nll": {
            "ids": ids,
            "n_targets": 511,
            "mean_nll": mean_nll,
            "perplexity": float(np.exp(mean_nll)),
            "per_position_nll_first64": [float(v) for v in nll[:64]],
            "per_position_note": "entry t = logsumexp(logits_t) - logits_t[ids[t+1]], logits_t "
                                 "from running ids[0..510] at positions 0..510",
        },
    }
    with open(args.out, "w") as fo:
        json.dump(out, fo, indent=1)
        fo.write("\n")
    print(f"wrote {args.out}  ({time.time() - t_start:.2f}s)  golden check "
          f"{'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
