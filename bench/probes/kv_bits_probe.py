#!/usr/bin/env python3
"""Which KV bit widths SmolLM2 tolerates, measured in numpy before any type was built
(docs/METHOD.md §6, "k4v3"). Every layer's K and V are quantised as a paged pool would hold
them: blocks of 64 positions, block 0 (the attention sink) and the partial block kept exact,
K per channel over a block (KIVI) or per position over a group, V per position over groups of
channels, asymmetric with round-to-nearest; optionally after a Hadamard rotation per head.
Prints the held-out NLL increase over the unquantised model on 4 windows of 512 WikiText-2
tokens after the calibration lines (about 25 s per row on 2 cores).

    python3 bench/probes/kv_bits_probe.py   (needs numpy, gguf, tokenizers: scripts/setup.sh)
    python3 bench/probes/kv_bits_probe.py --int4-error
        where int4's error comes from (session 8, kv_int4_error_probe.txt): K or V alone at 4
        bits, finer K groups, ranges clipped to least squared error, one layer left exact
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "reference"))
import smollm2_reference as R  # noqa: E402

ASSETS = os.environ.get("KVSHARE_ASSETS", os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                                       "shared", "assets"))
BLOCK = 64

m = R.SmolLM2(R.default_gguf(), np.float32)
tok, _ = R.build_tokenizer(m.reader)
lines = open(os.path.join(ASSETS, "wikitext-2-raw-test.txt"), encoding="utf-8").read().split("\n")
ids = tok.encode("\n".join(lines[94:])).ids
held = [ids[i * 512:(i + 1) * 512 + 1] for i in range(4)]


def hadamard(n):
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return (h / np.sqrt(n)).astype(np.float32)


HD = hadamard(m.hd)


def quantise(x, bits, axis, clip=False):
    if clip:
        return quantise_clipped(x, bits, axis)
    lo, hi = x.min(axis, keepdims=True), x.max(axis, keepdims=True)
    top = (1 << bits) - 1
    s = (hi - lo) / top
    s = np.where(s == 0, 1, s)
    return np.clip(np.round((x - lo) / s), 0, top) * s + lo


CLIP_FACTORS = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7]


def quantise_clipped(x, bits, axis):
    """Per group, the range shrunk about its midpoint by the factor of least squared error."""
    lo, hi = x.min(axis, keepdims=True), x.max(axis, keepdims=True)
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    best = best_err = None
    for a in CLIP_FACTORS:
        y = quantise(np.clip(x, mid - half * a, mid + half * a), bits, axis)
        err = ((y - x) ** 2).sum(axis, keepdims=True)
        if best is None:
            best, best_err = y, err
        else:
            best = np.where(err < best_err, y, best)
            best_err = np.minimum(err, best_err)
    return best


def store(k, v, k_bits, k_per_channel, v_bits, group, rotate, clip_k=False, clip_v=False):
    """k, v: [T][kv_heads][head_dim] as a pool of this layout would return them.
    k_per_channel: True (over the block), an int (over groups of that many positions), or
    False (per position over `group` channels)."""
    if rotate:
        k, v = k @ HD, v @ HD
    k, v = k.copy(), v.copy()
    for b in range(1, k.shape[0] // BLOCK):  # block 0 and the partial block stay exact
        sl = slice(b * BLOCK, (b + 1) * BLOCK)
        if k_per_channel:
            tg = BLOCK if k_per_channel is True else k_per_channel
            for t0 in range(b * BLOCK, (b + 1) * BLOCK, tg):
                k[t0:t0 + tg] = quantise(k[t0:t0 + tg], k_bits, 0, clip_k)
        else:
            k[sl] = quantise(k[sl].reshape(BLOCK, -1, group), k_bits, 2).reshape(k[sl].shape)
        v[sl] = quantise(v[sl].reshape(BLOCK, -1, group), v_bits, 2, clip_v).reshape(v[sl].shape)
    if rotate:
        k, v = k @ HD.T, v @ HD.T
    return k, v


def forward(seq, layout):
    T = len(seq)
    pos = np.arange(T)
    g = m.nh // m.nkv
    x = m.emb[np.asarray(seq)]
    for li, w in enumerate(m.layers):
        lay = layout[li] if isinstance(layout, list) else layout  # a list: one per layer
        h = m.rmsnorm(x, w["attn_norm"])
        q = m.rope((h @ w["attn_q"].T).reshape(T, m.nh, m.hd), pos)
        k = m.rope((h @ w["attn_k"].T).reshape(T, m.nkv, m.hd), pos)
        v = (h @ w["attn_v"].T).reshape(T, m.nkv, m.hd)
        if callable(lay):  # lay(layer, q, k, v) -> (k, v) as stored
            k, v = lay(li, q, k, v)
        elif lay:
            k, v = store(k, v, *lay)
        att = np.einsum("tkjd,skd->kjts", q.reshape(T, m.nkv, g, m.hd), k) / np.sqrt(m.hd)
        att = np.where(pos[None, :] > pos[:, None], -np.inf, att)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + np.einsum("kjts,skd->tkjd", att, v).reshape(T, m.D) @ w["attn_output"].T
        h = m.rmsnorm(x, w["ffn_norm"])
        a = h @ w["ffn_gate"].T
        x = x + ((a / (1 + np.exp(-a))) * (h @ w["ffn_up"].T)) @ w["ffn_down"].T
    return m.rmsnorm(x, m.out_norm)


def nll(layout):
    s = n = 0
    for wdw in held:
        z = m.logits(forward(wdw[:-1], layout)).astype(np.float64)
        tgt = np.asarray(wdw[1:])
        s += float((R.logsumexp(z) - z[np.arange(len(tgt)), tgt]).sum())
        n += len(tgt)
    return s / n


ROWS = [  # name, (K bits, K per channel, V bits, group, rotate), bits per value at 64-token blocks
    ("int4 (K/ch, V/32)", (4, True, 4, 32, False), 4.75),
    ("K4 V4/64", (4, True, 4, 64, False), 4.5),
    ("K4 V3/64 (k4v3)", (4, True, 3, 64, False), 4.0),
    ("K3 V4/32", (3, True, 4, 32, False), 4.25),
    ("K3 V3/64", (3, True, 3, 64, False), 3.5),
    ("K2 V2/32", (2, True, 2, 32, False), 2.75),
    ("rotated K4 V4/64", (4, True, 4, 64, True), 4.5),
    ("rotated K4/tok V4/64", (4, False, 4, 64, True), 4.5),
]
INT4 = (4, True, 4, 32, False)
INT4_ERROR_ROWS = [  # name, layout, bits per value (0: not a candidate layout)
    ("int4", INT4, 4.75),
    ("K8 V4/32 (V's share)", (8, True, 4, 32, False), 0),
    ("K4 V8/32 (K's share)", (4, True, 8, 32, False), 0),
    ("K4 over 32 positions, V4/64", (4, 32, 4, 64, False), 4.75),
    ("K5 V3/64", (5, True, 3, 64, False), 4.5),
    ("K5 V3/32", (5, True, 3, 32, False), 4.75),
    ("int4, K range clipped", INT4 + (True, False), 4.75),
    ("int4, V range clipped", INT4 + (False, True), 4.75),
    ("int4 but layer 0 exact", [None] + [INT4] * (m.L - 1), 0),
    ("int4 but layer 1 exact", [INT4, None] + [INT4] * (m.L - 2), 0),
]


def main():
    rows = INT4_ERROR_ROWS if "--int4-error" in sys.argv else ROWS
    base = nll(None)
    print(f"unquantised held-out NLL {base:.4f} ({sum(len(w) - 1 for w in held)} tokens)")
    print(f"{'layout':28s} {'vs f16':>7s} {'NLL +':>8s}")
    for name, layout, bits in rows:
        share = f"{bits / 16:7.3f}" if bits else f"{'-':>7s}"
        print(f"{name:28s} {share} {nll(layout) - base:+8.4f}", flush=True)


if __name__ == "__main__":
    main()
