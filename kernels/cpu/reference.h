// The plain reference of every backend op: scalar C++, written to be read, double
// accumulation where it matters. The fast CPU kernels (and the CUDA ones) are tested against
// these. Shapes and conventions are those of kernels/backend.h.
#pragma once

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/tensor.h"

namespace kvshare::cpu::ref {

// out[t][r] = sum_c x[t][c] * W[r][c], W dequantized to fp32 exactly, sums in double.
// If abs_out is not null it receives sum_c |x[t][c] * W[r][c]| (the scale tests use for an
// error bound that does not blow up when the sum cancels).
void MatMul(const Tensor& w, const float* x, int n, float* out, float* abs_out = nullptr);

// The integer dot-product path: x quantized per 32-block to int8 (QuantizeActivationsRef),
// then each block's exact integer dot with the weight's quants (per 16-element half for the
// types with per-16 scales, see DecodeBlock32), scaled in double; offsets use the exact sum.
// What the int8-activation kernels compute, up to fp32 rounding. two_digits: x as two int8
// digits (quant.h QuantizedActivations::q2), what Activations::kInt8x2 computes.
void MatMulQ8Activations(const Tensor& w, const float* x, int n, float* out,
                         bool two_digits = false);

void Embed(const Tensor& table, const int32_t* ids, int n, float* out);

// The llama2.c rmsnorm: out = weight * (x / sqrt(mean(x^2) + eps)).
void RmsNorm(const float* x, const float* weight, int n, int dim, float eps, float* out);

// llama2.c run.c in fp32: freq = 1 / powf(theta, i / head_dim) for even i, angle = pos * freq.
void Rope(float* x, const int32_t* pos, int n, int n_heads, int head_dim, float theta);

void SiluMul(const float* gate, const float* up, int64_t count, float* out);
// gelu(g) = 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))), the tanh form llama.cpp's GELU and
// Gemma use; out may alias gate.
void GeluMul(const float* gate, const float* up, int64_t count, float* out);
void Add(float* x, const float* y, int64_t count);

// Stores through kv_codec.h's StoreKv (the definition of every KV type).
void WriteKv(const KvGeometry& g, void* pool, const int32_t* block_table, int start_pos, int n,
             const float* k, const float* v, void* tail = nullptr);

// Naive attention: gathers each sequence's K/V through its block table (and int4 tail),
// dequantised position by position (kv_codec.h LoadKv), and runs a two-pass softmax in double.
void Attention(const KvGeometry& g, const void* pool, const AttentionSeq* seqs, int n_seqs,
               const float* q, int n_heads, float* out);

// Attention over contiguous K/V ([ctx][n_kv_heads][head_dim]) for queries at positions
// start_pos..start_pos+n_q-1 (q, out: [n_q][n_heads][head_dim]). Independent of any pool,
// to check the paged version against. window > 0: query at position p sees [p - window + 1, p].
void AttentionContiguous(const float* k, const float* v, int n_kv_heads, int head_dim,
                         const float* q, int n_q, int start_pos, int n_heads, float* out,
                         int window = 0);

}  // namespace kvshare::cpu::ref
