// RmsNorm, RoPE, SiLU-mul and Add on the CPU, per SIMD level. Row-local, so callers may split
// rows (or, for SiluMul/Add, fixed element ranges) over threads freely.
#pragma once

#include <cstdint>

#include "kernels/cpu/isa.h"

namespace kvshare::cpu {

void RmsNormRows(Isa isa, const float* x, const float* weight, int n, int dim, float eps,
                 float* out);
void SiluMulRange(Isa isa, const float* gate, const float* up, int64_t count, float* out);
void AddRange(Isa isa, float* x, const float* y, int64_t count);
// out[i] = gelu_tanh(gate[i]) * up[i] in fp32 (ref::GeluMul computes it in double).
void GeluMulRange(Isa isa, const float* gate, const float* up, int64_t count, float* out);

// Rotates pairs (2i, 2i+1) of every head of token rows [0, n) by pos[t] * freq[i / 2]; with
// freq from RopeFrequencies this is the reference's arithmetic exactly.
void RopeRows(float* x, const int32_t* pos, int n, int n_heads, int head_dim, const float* freq);
// freq[i] = 1 / powf(theta, 2i / head_dim) computed as llama2.c does, i < head_dim / 2.
void RopeFrequencies(int head_dim, float theta, float* freq);

}  // namespace kvshare::cpu
