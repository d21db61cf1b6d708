#!/usr/bin/env python3
"""int4a's query weights for SmolLM2-135M (common/engine/query_weights.h) in numpy, float64,
through smollm2_reference.py's independent model and tokenizer: for layers 0, 14 and 29, per K
channel (3 KV heads x 64), the mean over the probe's positions of q_c^2 (post-RoPE) summed over
the 3 query heads of the channel's KV head. The probe: BOS (id 1: the GGUF names one) then the
first 256 tokens of the quality probe's text, read from common/engine/quality_probe.cc (the
text is data; no project code runs). Writes tests/reference/query_weights.json, read by
kv_type_engine_test.

    python3 tests/reference/query_weights_reference.py [--gguf PATH] [--out PATH]
"""
import argparse
import json
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import smollm2_reference as R  # noqa: E402

LAYERS = (0, 14, 29)


def probe_text():
    src = open(os.path.join(os.path.dirname(__file__), "..", "..", "common", "engine",
                            "quality_probe.cc"), encoding="utf-8").read()
    body = src[src.index("kQualityProbeText[] ="):]
    body = body[:body.index(";")]
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body)).encode().decode("unicode_escape")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=R.default_gguf())
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "query_weights.json"))
    a = ap.parse_args()
    m = R.SmolLM2(a.gguf, np.float64)
    tok, _ = R.build_tokenizer(m.reader)
    ids = [1] + tok.encode(probe_text()).ids[:256]
    T, g = len(ids), m.nh // m.nkv
    pos = np.arange(T)
    x = m.emb[np.asarray(ids)]
    weights = {}
    for li, w in enumerate(m.layers):
        h = m.rmsnorm(x, w["attn_norm"])
        q = m.rope((h @ w["attn_q"].T).reshape(T, m.nh, m.hd), pos)
        k = m.rope((h @ w["attn_k"].T).reshape(T, m.nkv, m.hd), pos)
        v = (h @ w["attn_v"].T).reshape(T, m.nkv, m.hd)
        qg = q.reshape(T, m.nkv, g, m.hd)
        if li in LAYERS:
            weights[str(li)] = [float(x) for x in (qg ** 2).sum(2).mean(0).reshape(-1)]
        att = np.einsum("tkjd,skd->kjts", qg, k) / np.sqrt(m.hd)
        att = np.where(pos[None, :] > pos[:, None], -np.inf, att)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + np.einsum("kjts,skd->tkjd", att, v).reshape(T, m.D) @ w["attn_output"].T
        h = m.rmsnorm(x, w["ffn_norm"])
        a_ = h @ w["ffn_gate"].T
        x = x + ((a_ / (1 + np.exp(-a_))) * (h @ w["ffn_up"].T)) @ w["ffn_down"].T
    doc = {"about": "tests/reference/query_weights_reference.py", "ids_head": ids[:8],
           "positions": T, "weights": weights}
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=0)
    print(f"{T} positions; layer 0 channels 0-3: {weights['0'][:4]}; wrote {a.out}")


if __name__ == "__main__":
    main()
