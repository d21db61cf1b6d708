#!/usr/bin/env python3
"""Where int4's K bits should go (docs/METHOD.md §6, "K bits where the queries look"), measured
in numpy on SmolLM2 before any type is built.

int4 gives every K channel 4 bits over a 64-token block. Attention reads K only through q . k,
so a channel's rounding error costs in proportion to E[q_c^2] (summed over the query heads of its
KV head) times its step squared; with b_c bits over a range r_c the expected cost is about
w_c r_c^2 4^-b_c. Giving each block's 4 x head_dim bits per head greedily to the channel whose
cost falls most (each bit quarters it; at most 8 bits, 0 bits stores the range's midpoint)
minimises the sum. Rows (every layer lowered, 64-token blocks, block 0 and the partial block
kept exact, V as int4's: 4 bits per position over 32 channels):

  int4                     4 bits per channel
  K bits by range          w_c = 1: the block's ranges alone decide
  K bits by q (calib)      w_c = mean q_c^2 over 4 windows of 512 calibration tokens (the
                           WikiText-2 lines before the held-out text)
  K bits by q (probe text) w_c from the quality probe's fixed text (common/engine/
                           quality_probe.cc, its first 256 tokens): what a worker can compute
                           for itself when it loads a model
  K bits by q, at most 6   the calibration weights, no channel over 6 bits

Bytes vs f16 at 64-token blocks: int4 0.297; the allocated rows also store each channel's width
in 4 bits per block (0.299).

    python3 bench/probes/k_bit_allocation_probe.py [--first W] [--windows N]
        held-out windows W .. W+N-1 of 512 tokens (default 0, 8); about 12 s per window per row
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import kv_bits_probe as P  # noqa: E402  (loads SmolLM2 and the WikiText-2 tokens)
from query_weights_reference import probe_text  # noqa: E402

m, BLOCK = P.m, P.BLOCK
GROUP = m.nh // m.nkv


def allocate(weight, total, most=8):
    """weight: [H][hd] cost at 0 bits per channel; each bit quarters a channel's cost. Greedy:
    `total` bits per head, at most `most` per channel, ties to the lower channel."""
    bits = np.zeros(weight.shape, np.int64)
    for h in range(weight.shape[0]):
        cost = weight[h].astype(np.float64).copy()
        for _ in range(total):
            c = int(np.argmax(np.where(bits[h] < most, cost, -1.0)))
            bits[h, c] += 1
            cost[c] /= 4
    return bits


def quantise_bits(x, bits):
    """x: [T][H][hd] over one block; bits: [H][hd]. Asymmetric per channel over the block."""
    lo, hi = x.min(0), x.max(0)
    top = (np.left_shift(1, bits) - 1).astype(np.float32)
    s = np.where(top > 0, (hi - lo) / np.maximum(top, 1), 1)
    s = np.where(s == 0, 1, s)
    y = np.clip(np.round((x - lo) / s), 0, top) * s + lo
    return np.where(top > 0, y, (lo + hi) / 2)


def query_weights(windows):
    """Per layer [H][hd]: mean over positions of q_c^2 summed over the KV head's query heads."""
    acc = [[] for _ in range(m.L)]

    def collect(li, q, k, v):
        acc[li].append((q.reshape(len(q), m.nkv, GROUP, m.hd) ** 2).sum(2).mean(0))
        return k, v

    for w in windows:
        P.forward(w, [collect] * m.L)
    return [np.mean(a, 0) for a in acc]


def allocated(weights, most=8):
    """The layout: K bits allocated per block by weights[layer] * range^2, V as int4's."""
    def store(li, q, k, v):
        k, v = k.copy(), v.copy()
        for b in range(1, k.shape[0] // BLOCK):
            sl = slice(b * BLOCK, (b + 1) * BLOCK)
            r2 = (k[sl].max(0) - k[sl].min(0)) ** 2
            w = 1.0 if weights is None else weights[li]
            k[sl] = quantise_bits(k[sl], allocate(w * r2, 4 * m.hd, most))
            v[sl] = P.quantise(v[sl].reshape(BLOCK, -1, 32), 4, 2).reshape(v[sl].shape)
        return k, v
    return store


def probe_text_ids():
    return P.tok.encode(probe_text()).ids[:256]  # SmolLM2 adds no BOS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--windows", type=int, default=8)
    a = ap.parse_args()
    P.held = [P.ids[i * 512:(i + 1) * 512 + 1] for i in range(a.first, a.first + a.windows)]
    cal_ids = P.tok.encode("\n".join(P.lines[:94])).ids
    calib = query_weights([cal_ids[i * 512:(i + 1) * 512] for i in range(4)])
    probe = query_weights([probe_text_ids()])
    rows = [("int4", P.INT4), ("K bits by range", allocated(None)),
            ("K bits by q (calib)", allocated(calib)),
            ("K bits by q (probe text)", allocated(probe)),
            ("K bits by q, at most 6", allocated(calib, 6))]
    base = P.nll(None)
    print(f"unquantised held-out NLL {base:.4f} ({sum(len(w) - 1 for w in P.held)} tokens, "
          f"windows {a.first}..{a.first + a.windows - 1})")
    for name, layout in rows:
        print(f"{name:26s} {'0.297' if layout is P.INT4 else '0.299'} "
              f"{P.nll(layout) - base:+8.4f}", flush=True)


if __name__ == "__main__":
    main()
