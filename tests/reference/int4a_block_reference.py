#!/usr/bin/env python3
"""The int4a KV layout (kernels/kv_type.h) worked out in numpy, without project code: one block
of K/V built from an exact formula, the per-head bit allocation, and what a pool of int4a returns
for every position. Writes tests/reference/int4a_block.json, read by kv_codec_test.

Geometry: 8-token blocks, 2 KV heads of 32 channels (kv_dim 64). Positions 0-15 are written
(block 0 stays f16 in the tail, block 1 is quantised when position 15 arrives):
  K[t][c] = (((37 t + 11 c) % 23) - 11) * (c % 5 + 1) / 8 + (t % 2) * (c % 3) * 4
            (multiples of 1/8, exact in f16), times 32 for channels 5 and 37 (the most bits),
            and 1.5 for channels 0 and 32 (no range: 0 bits)
  V[t][c] = ((t * 5 + c * 3) % 17 - 8) / 4
  weights w[c] = (c % 4 + 1) ** 2 / 4  (channel c's query weight, KvGeometry::k_weights)
The allocation: per head, 4 * 32 bits given one at a time to the channel of the largest
w * range^2 (a bit quarters it; at most 8; ties to the lower channel). A channel of b bits
stores min = f16(min), scale = f16((max - min) / (2^b - 1)), codes round-half-even((x - min) /
scale) clamped to [0, 2^b - 1], read back as code * scale + min in float32; 0 bits store
f16(min + (max - min) / 2). V: per position over 32 channels, 4 bits, the same quantiser.

    python3 tests/reference/int4a_block_reference.py [--out PATH]
"""
import argparse
import json
import os

import numpy as np

T, H, HD = 8, 2, 32
C = H * HD
f32, f16 = np.float32, np.float16


def k_at(t, c):
    if c % 32 == 0:
        return f32(1.5)  # no range: 0 bits
    scale = 32 if c % 32 == 5 else 1  # a wide channel: the most bits
    return scale * f32((((37 * t + 11 * c) % 23) - 11) * (c % 5 + 1) / 8 + (t % 2) * (c % 3) * 4)


def v_at(t, c):
    return f32(((t * 5 + c * 3) % 17 - 8) / 4)


def quantise(x, top):
    """x: float32 values of one group; returns what reading them back gives."""
    mn, mx = x.min(), x.max()
    m = f32(f16(mn))
    s = f32(f16(f32(mx - mn) / f32(top)))
    if s > 0:
        q = np.clip(np.rint((x - m) / s), 0, top)
    else:
        q = np.zeros_like(x)
    return q.astype(f32) * s + m


def allocate(cost):
    bits = np.zeros(len(cost), np.int64)
    left = cost.astype(np.float64).copy()
    for _ in range(4 * len(cost)):
        i = int(np.argmax(np.where(bits < 8, left, -np.inf)))
        bits[i] += 1
        left[i] /= 4
    return bits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "int4a_block.json"))
    out = ap.parse_args().out
    k = np.array([[k_at(t, c) for c in range(C)] for t in range(2 * T)], f32)
    v = np.array([[v_at(t, c) for c in range(C)] for t in range(2 * T)], f32)
    assert np.array_equal(k.astype(f16).astype(f32), k) and np.array_equal(v.astype(f16), v)
    w = np.array([(c % 4 + 1) ** 2 / 4 for c in range(C)], f32)
    kb, vb = k[T:], v[T:]
    rng = (kb.max(0) - kb.min(0)).astype(f32).astype(np.float64)
    bits = np.concatenate([allocate(w[h * HD:(h + 1) * HD].astype(np.float64) *
                                    rng[h * HD:(h + 1) * HD] ** 2) for h in range(H)])
    k_read, v_read = k.copy(), v.copy()
    for c in range(C):
        b = int(bits[c])
        if b == 0:
            mn, mx = kb[:, c].min(), kb[:, c].max()
            k_read[T:, c] = f32(f16(mn + f32(mx - mn) / f32(2)))
        else:
            k_read[T:, c] = quantise(kb[:, c], (1 << b) - 1)
    for t in range(T, 2 * T):
        for g in range(C // 32):
            v_read[t, g * 32:(g + 1) * 32] = quantise(vb[t - T, g * 32:(g + 1) * 32], 15)
    doc = {
        "about": "int4a block (kernels/kv_type.h) in numpy: tests/reference/int4a_block_reference.py",
        "block_tokens": T, "n_kv_heads": H, "head_dim": HD,
        "weights": [float(x) for x in w],
        "bits": [int(b) for b in bits],
        "k": [[float(x) for x in row] for row in k_read],
        "v": [[float(x) for x in row] for row in v_read],
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=0)
    print(f"bits per channel {doc['bits']}; wrote {out}")


if __name__ == "__main__":
    main()
