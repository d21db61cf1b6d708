// The matmul kernels of each SIMD level, called by MatMulRunner (matmul.cc) for a slice of the
// output: tokens [t0, t1) x rows [r0, r1) or 16-row groups [g0, g1). out is [n][w.rows()].
// Every kernel computes each output element with an order of operations that depends only on
// the element (not on the slice it is computed in), so results do not depend on how the work
// is split or on the thread count.
//
// Versions, side by side (llm.c habit):
//   Int8Groups   x quantized per 32-block to int8 (QuantizedBatch), integer dot products with
//                the packed quants (AVX-512 VNNI vpdpbusd / AVX2 maddubs), one fp32 fma per
//                block (two for Pack::kQ8F) and row. The fast path for every quantized type.
//                With a second digit (QuantizedBatch::q2) each block has two integer dots,
//                joined in int32 as (dot << 8) + dot2 (q + q2 / 256) before the scale.
//   F32Groups    fp32 activations, packed quants converted to fp32 in registers and fused into
//                the fma (no quantization error on x). Kept for the exact mode and as the
//                measured alternative.
//   DenseRows    F32 / F16 / BF16 weights, one fp32 dot per row.
#pragma once

#include <cstdint>

#include "kernels/cpu/packed_weight.h"
#include "kernels/cpu/quant.h"

namespace kvshare::cpu {

// n rows of activations quantized per 32-block; row t's block b is q[t * cols + 32 b ..],
// scale[t * nb + b], sum[...], qsum[...] (see QuantizedActivations in quant.h).
struct QuantizedBatch {
  int8_t* q = nullptr;
  float* scale = nullptr;
  float* sum = nullptr;
  int32_t* qsum = nullptr;
  int64_t cols = 0;
  int64_t nb = 0;
  // Sum of the q of each block's first 16 elements (Pack::kQ8F weights only, whose two
  // halves have their own scales; null otherwise). Same indexing as qsum.
  int32_t* qsum_lo = nullptr;
  // The second digits (Activations::kInt8x2; null otherwise), indexed as q, qsum and qsum_lo.
  int8_t* q2 = nullptr;
  int32_t* q2sum = nullptr;
  int32_t* q2sum_lo = nullptr;
  QuantizedActivations Row(int64_t t) const {
    return {q + t * cols,
            scale + t * nb,
            sum + t * nb,
            qsum + t * nb,
            q2 != nullptr ? q2 + t * cols : nullptr,
            q2 != nullptr ? q2sum + t * nb : nullptr};
  }
};

#define KVSHARE_DECLARE_MATMUL_KERNELS                                                       \
  void QuantizeActivations(const float* x, int64_t cols, const QuantizedActivations& out);   \
  void Int8Groups(const CpuWeight& w, const QuantizedBatch& x, int t0, int t1, int64_t g0,   \
                  int64_t g1, float* out);                                                   \
  void F32Groups(const CpuWeight& w, const float* x, const float* xsum, int t0, int t1,      \
                 int64_t g0, int64_t g1, float* out);                                        \
  void DenseRows(const CpuWeight& w, const float* x, int t0, int t1, int64_t r0, int64_t r1, \
                 float* out);

namespace avx512 {
KVSHARE_DECLARE_MATMUL_KERNELS
}
namespace avx2 {
KVSHARE_DECLARE_MATMUL_KERNELS
}
// Plain C++ versions: the fallback on CPUs without AVX2 (weights not packed: F32Groups and
// Int8Groups are not used there; DenseRows handles every type by dequantizing rows).
namespace scalar {
void DenseRows(const CpuWeight& w, const float* x, int t0, int t1, int64_t r0, int64_t r1,
               float* out);
}

}  // namespace kvshare::cpu
