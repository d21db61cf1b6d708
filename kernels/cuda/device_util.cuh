// Small device functions the CUDA kernels share (cuda_kernels.cu, attention_tiles.cu): warp
// reductions, KV pool element loads and stores, the online-softmax merge weight.
#pragma once

#include <cuda_fp16.h>

#include <cmath>

namespace kvshare::cuda {

__device__ __forceinline__ float WarpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// KV pool elements: fp32 or IEEE half (KvType f32 / f16; same layout, element for element).
__device__ __forceinline__ float KvLoad(const float* p) { return *p; }
__device__ __forceinline__ float KvLoad(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void KvStore(float* p, float x) { *p = x; }
__device__ __forceinline__ void KvStore(__half* p, float x) { *p = __float2half_rn(x); }

// The weight of a partial softmax state with running max m when merged under max `max` (0 for
// a state that has seen no key).
__device__ __forceinline__ float MergeWeight(float m, float max) {
  return m == -INFINITY ? 0.0f : expf(m - max);
}

}  // namespace kvshare::cuda
