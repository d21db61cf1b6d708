// The CUDA kernels of the backend (the tiled prefill attention is in attention_tiles.cu).
// Storage: weights fp16/bf16, activations fp32, the KV pool fp32 or f16 (kernels/kv_type.h);
// every reduction accumulates in fp32. Each kernel's plain reference is the same-named function
// of kernels/cpu/reference.cc.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_util.cuh"

namespace kvshare::cuda {
namespace {

constexpr int kThreads = 256;

int Blocks(int64_t count, int threads = kThreads) {
  return static_cast<int>(std::min<int64_t>((count + threads - 1) / threads, 1 << 30));
}

__device__ __forceinline__ float HalfBits(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}
__device__ __forceinline__ float Bf16Bits(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

template <bool kBf16>
__device__ __forceinline__ void Store(void* dst, int64_t i, float v) {
  if constexpr (kBf16) {
    static_cast<__nv_bfloat16*>(dst)[i] = __float2bfloat16_rn(v);
  } else {
    static_cast<__half*>(dst)[i] = __float2half_rn(v);
  }
}

template <bool kBf16>
__device__ __forceinline__ float Load(const void* src, int64_t i) {
  if constexpr (kBf16) {
    return __bfloat162float(static_cast<const __nv_bfloat16*>(src)[i]);
  } else {
    return __half2float(static_cast<const __half*>(src)[i]);
  }
}

// ---- Dequantization (kernels/tensor.h block layouts), one thread per element.

__device__ __forceinline__ float HalfAt(const uint8_t* p) { return HalfBits(p[0] | (p[1] << 8)); }

// Element j (0..31) of a Q5_0 / Q5_1 block's 5-bit quant: low 4 bits as Q4_x, bit j of qh.
__device__ __forceinline__ int Q5Quant(const uint8_t* qh, const uint8_t* qs, int j) {
  const int low = j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
  const uint32_t h = qh[0] | (qh[1] << 8) | (qh[2] << 16) | (uint32_t(qh[3]) << 24);
  return low | (((h >> j) & 1) << 4);
}

// Q4_K / Q5_K: 6-bit scale and min of sub-block j (kernels/cpu/quant.cc ScaleMinK4).
__device__ __forceinline__ void ScaleMinK4(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Element i (0..255) of a K-quant super-block (the formulas of kernels/cpu/quant.cc).
template <uint32_t kType>
__device__ __forceinline__ float KQuantElement(const uint8_t* blk, int i) {
  const int l = i % 32;
  if constexpr (kType == 11) {  // Q3_K: hmask[32], qs[64], scales[12], f16 d
    const int half = i / 128, j = (i % 128) / 32, si = i / 16;
    const uint8_t* sc = blk + 96;
    const int low4 = si < 8 ? (sc[si] & 15) : (sc[si - 8] >> 4);
    const int scale = low4 | (((sc[8 + si % 4] >> (2 * (si / 4))) & 3) << 4);
    const int q =
        ((blk[32 + 32 * half + l] >> (2 * j)) & 3) - (((blk[l] >> (4 * half + j)) & 1) ? 0 : 4);
    return HalfAt(blk + 108) * static_cast<float>(scale - 32) * static_cast<float>(q);
  } else if constexpr (kType == 12 || kType == 13) {  // Q4_K / Q5_K
    int sc, m;
    ScaleMinK4(blk + 4, i / 32, &sc, &m);
    const uint8_t* qs = blk + (kType == 12 ? 16 : 48);
    const uint8_t byte = qs[32 * (i / 64) + l];
    int q = (i % 64) < 32 ? (byte & 15) : (byte >> 4);
    if constexpr (kType == 13) q |= ((blk[16 + l] >> (i / 32)) & 1) << 4;
    const float d1 = HalfAt(blk) * static_cast<float>(sc);
    const float m1 = HalfAt(blk + 2) * static_cast<float>(m);
    return d1 * static_cast<float>(q) - m1;
  } else {  // Q6_K: ql[128], qh[64], int8 scales[16], f16 d
    const int half = i / 128, k = (i % 128) / 32;
    const uint8_t lo = blk[64 * half + l + 32 * (k % 2)];
    const int low = k < 2 ? (lo & 15) : (lo >> 4);
    const int high = (blk[128 + 32 * half + l] >> (2 * k)) & 3;
    const int8_t scale = static_cast<int8_t>(blk[192 + i / 16]);
    return HalfAt(blk + 208) * static_cast<float>(scale) *
           static_cast<float>((low | (high << 4)) - 32);
  }
}

template <uint32_t kType, bool kBf16>
__global__ void DequantizeKernel(const uint8_t* src, int64_t n, void* dst) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n;
       e += int64_t(gridDim.x) * blockDim.x) {
    float v;
    if constexpr (kType == 0) {  // F32
      v = reinterpret_cast<const float*>(src)[e];
    } else if constexpr (kType == 1) {  // F16
      v = HalfBits(reinterpret_cast<const uint16_t*>(src)[e]);
    } else if constexpr (kType == 30) {  // BF16
      v = Bf16Bits(reinterpret_cast<const uint16_t*>(src)[e]);
    } else if constexpr (kType == 11 || kType == 12 || kType == 13 || kType == 14) {
      constexpr int kBytes = kType == 11 ? 110 : kType == 12 ? 144 : kType == 13 ? 176 : 210;
      v = KQuantElement<kType>(src + (e / 256) * kBytes, static_cast<int>(e % 256));
    } else if constexpr (kType == 6 || kType == 7) {  // Q5_0, Q5_1
      const uint8_t* blk = src + (e / 32) * (kType == 6 ? 22 : 24);
      const int j = static_cast<int>(e % 32);
      const uint8_t* qh = blk + (kType == 6 ? 2 : 4);
      const int q = Q5Quant(qh, qh + 4, j);
      if constexpr (kType == 6) {
        v = static_cast<float>(q - 16) * HalfAt(blk);
      } else {
        v = static_cast<float>(q) * HalfAt(blk) + HalfAt(blk + 2);
      }
    } else {
      const int64_t b = e / 32;
      const int j = static_cast<int>(e % 32);
      if constexpr (kType == 8) {  // Q8_0: f16 d, int8 q[32]
        const uint8_t* blk = src + b * 34;
        const uint16_t d = blk[0] | (blk[1] << 8);
        v = HalfBits(d) * static_cast<float>(static_cast<int8_t>(blk[2 + j]));
      } else if constexpr (kType == 2) {  // Q4_0: f16 d, qs[16]; x = d * (nibble - 8)
        const uint8_t* blk = src + b * 18;
        const uint16_t d = blk[0] | (blk[1] << 8);
        const uint8_t q = blk[2 + (j & 15)];
        const int nib = j < 16 ? (q & 15) : (q >> 4);
        v = HalfBits(d) * static_cast<float>(nib - 8);
      } else {  // Q4_1: f16 d, f16 m, qs[16]; x = d * nibble + m
        const uint8_t* blk = src + b * 20;
        const uint16_t d = blk[0] | (blk[1] << 8);
        const uint16_t m = blk[2] | (blk[3] << 8);
        const uint8_t q = blk[4 + (j & 15)];
        const int nib = j < 16 ? (q & 15) : (q >> 4);
        v = HalfBits(d) * static_cast<float>(nib) + HalfBits(m);
      }
    }
    Store<kBf16>(dst, e, v);
  }
}

template <uint32_t kType>
void DequantizeAs(const void* src, int64_t n, bool bf16, void* dst, cudaStream_t stream) {
  const int blocks = std::min(Blocks(n), 65535 * 8);
  const auto* s = static_cast<const uint8_t*>(src);
  if (bf16) {
    DequantizeKernel<kType, true><<<blocks, kThreads, 0, stream>>>(s, n, dst);
  } else {
    DequantizeKernel<kType, false><<<blocks, kThreads, 0, stream>>>(s, n, dst);
  }
}

template <bool kBf16>
__global__ void ToHalfKernel(const float* x, int64_t count, void* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    Store<kBf16>(out, i, x[i]);
  }
}

template <bool kBf16>
__global__ void EmbedKernel(const void* table, const int32_t* ids, int dim, float* out) {
  const int64_t src = static_cast<int64_t>(ids[blockIdx.x]) * dim;
  float* o = out + static_cast<int64_t>(blockIdx.x) * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = Load<kBf16>(table, src + i);
}

// One block per row.
__global__ void RmsNormKernel(const float* x, const float* weight, int dim, float eps, float* out) {
  __shared__ float partial[32];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * dim;
  float* orow = out + static_cast<int64_t>(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = WarpSum(ss);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    const int warps = blockDim.x >> 5;
    float v = threadIdx.x < warps ? partial[threadIdx.x] : 0.0f;
    v = WarpSum(v);
    if (threadIdx.x == 0) partial[0] = v;
  }
  __syncthreads();
  const float inv = rsqrtf(partial[0] / dim + eps);
  // out may alias x: every read of xr above finished before the barrier.
  for (int i = threadIdx.x; i < dim; i += blockDim.x) orow[i] = weight[i] * (inv * xr[i]);
}

// One thread per (row, head, pair). freq: the host-computed inverse frequencies (the
// reference's exact fp32 values); the angle pos * freq is formed in fp32 as the reference does.
__global__ void RopeKernel(float* x, const int32_t* pos, int64_t pairs_total, int n_heads,
                           int head_dim, const float* freq) {
  const int pairs = head_dim / 2;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < pairs_total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int pair = static_cast<int>(e % pairs);
    const int64_t row_head = e / pairs;
    const int64_t t = row_head / n_heads;
    const float val = pos[t] * freq[pair];
    float fci, fcr;
    sincosf(val, &fci, &fcr);
    float* v = x + row_head * head_dim + 2 * pair;
    const float v0 = v[0], v1 = v[1];
    v[0] = v0 * fcr - v1 * fci;
    v[1] = v0 * fci + v1 * fcr;
  }
}

__global__ void SiluMulKernel(const float* gate, const float* up, int64_t count, float* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

__global__ void AddKernel(float* x, const float* y, int64_t count) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    x[i] += y[i];
  }
}

// One thread per (row, channel) of the batch: every sequence's rows of the layer in one launch.
template <typename T>
__global__ void WriteKvRowsKernel(int block_tokens, int kv_dim, T* pool, const KvWriteRow* rows,
                                  int64_t count) {
  const int64_t v_plane = VPlaneOffset(block_tokens, kv_dim);
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < count;
       e += int64_t(gridDim.x) * blockDim.x) {
    const KvWriteRow r = rows[e / kv_dim];
    const int c = static_cast<int>(e % kv_dim);
    const int64_t dst = KvWriteDest(r, block_tokens, kv_dim, c);
    KvStore(pool + dst, r.k[c]);
    KvStore(pool + dst + v_plane, r.v[c]);
  }
}

// ---- Paged attention.
//
// One thread block per (query row, KV head, chunk of that KV head's query heads, split of the
// keys). Each KV row is loaded once (one warp per key, lane l holding dims l, l+32, ...) and
// used by every query head of the chunk (GQA). Warps take interleaved keys and keep an online
// softmax state (max m, sum l, unnormalised acc); the block merges its warps' states, then
// either writes the normalised output (one split) or its partial state for the merge kernel.

constexpr int kAttWarps = 4;
constexpr int kAttHeads = 4;  // query heads per block

template <int kPerLane, typename T>
__global__ void __launch_bounds__(kAttWarps * 32)
    AttentionSplitKernel(AttentionShape s, const T* pool, const int32_t* tables,
                         const AttentionItem* items, int splits, int split_tokens, float scale,
                         const float* q, float* scratch, float* out) {
  constexpr int kDims = kPerLane * 32;
  __shared__ float sm_m[kAttWarps][kAttHeads], sm_l[kAttWarps][kAttHeads];
  __shared__ float sm_acc[kAttWarps][kAttHeads][kDims];

  const AttentionItem it = items[blockIdx.x];
  const int hd = s.head_dim;
  const int group = s.n_heads / s.n_kv_heads;
  const int chunks = (group + kAttHeads - 1) / kAttHeads;
  const int kvh = blockIdx.y / chunks;
  const int h0 = kvh * group + (blockIdx.y % chunks) * kAttHeads;
  const int nh = min(kAttHeads, kvh * group + group - h0);
  const int len = it.pos + 1;
  const int p0 = blockIdx.z * split_tokens;
  const int p1 = min(len, p0 + split_tokens);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  float qr[kAttHeads][kPerLane], acc[kAttHeads][kPerLane], m[kAttHeads], l[kAttHeads];
#pragma unroll
  for (int h = 0; h < kAttHeads; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      qr[h][i] = (h < nh && d < hd)
                     ? q[(static_cast<int64_t>(it.row) * s.n_heads + h0 + h) * hd + d] * scale
                     : 0.0f;
      acc[h][i] = 0.0f;
    }
  }

  const int kv_dim = s.n_kv_heads * hd;
  const int32_t* table = tables + it.table_offset;
  for (int p = p0 + warp; p < p1; p += kAttWarps) {
    const T* kp = pool + KvRowOffset(table, p, s.block_tokens, kv_dim) + kvh * hd;
    const T* vp = kp + VPlaneOffset(s.block_tokens, kv_dim);
    float kr[kPerLane], vr[kPerLane];
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      kr[i] = d < hd ? KvLoad(kp + d) : 0.0f;
      vr[i] = d < hd ? KvLoad(vp + d) : 0.0f;
    }
#pragma unroll
    for (int h = 0; h < kAttHeads; ++h) {
      if (h >= nh) break;
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) dot += qr[h][i] * kr[i];
      dot = WarpSum(dot);
      const float m_new = fmaxf(m[h], dot);
      const float corr = MergeWeight(m[h], m_new);
      const float e = expf(dot - m_new);
      l[h] = l[h] * corr + e;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) acc[h][i] = acc[h][i] * corr + e * vr[i];
      m[h] = m_new;
    }
  }

#pragma unroll
  for (int h = 0; h < kAttHeads; ++h) {
    if (lane == 0) {
      sm_m[warp][h] = m[h];
      sm_l[warp][h] = l[h];
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) sm_acc[warp][h][lane + 32 * i] = acc[h][i];
  }
  __syncthreads();

  for (int idx = threadIdx.x; idx < nh * hd; idx += blockDim.x) {
    const int h = idx / hd, d = idx % hd;
    float mx = -INFINITY;
    for (int w = 0; w < kAttWarps; ++w) mx = fmaxf(mx, sm_m[w][h]);
    float sum = 0.0f, a = 0.0f;
    for (int w = 0; w < kAttWarps; ++w) {
      const float wt = MergeWeight(sm_m[w][h], mx);
      sum += wt * sm_l[w][h];
      a += wt * sm_acc[w][h][d];
    }
    const int head = h0 + h;
    if (splits == 1) {
      out[(static_cast<int64_t>(it.row) * s.n_heads + head) * hd + d] = a / sum;
    } else {
      float* st =
          scratch +
          ((static_cast<int64_t>(blockIdx.x) * s.n_heads + head) * splits + blockIdx.z) * (hd + 2);
      st[d] = a;
      if (d == 0) {
        st[hd] = mx;
        st[hd + 1] = sum;
      }
    }
  }
}

// Merges the splits' partial states of one (item, head); one thread per dim.
__global__ void AttentionMergeKernel(AttentionShape s, const AttentionItem* items, int splits,
                                     const float* scratch, float* out) {
  const int hd = s.head_dim;
  const int head = blockIdx.y;
  const float* st =
      scratch + (static_cast<int64_t>(blockIdx.x) * s.n_heads + head) * splits * (hd + 2);
  float mx = -INFINITY;
  for (int k = 0; k < splits; ++k) mx = fmaxf(mx, st[k * (hd + 2) + hd]);
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float sum = 0.0f, a = 0.0f;
    for (int k = 0; k < splits; ++k) {
      const float* sk = st + k * (hd + 2);
      const float wt = MergeWeight(sk[hd], mx);
      sum += wt * sk[hd + 1];
      a += wt * sk[d];
    }
    out[(static_cast<int64_t>(items[blockIdx.x].row) * s.n_heads + head) * hd + d] = a / sum;
  }
}

}  // namespace

bool LaunchDequantize(uint32_t type, const void* src, int64_t n_elems, bool bf16, void* dst,
                      cudaStream_t stream) {
  switch (type) {
    case 0:
      DequantizeAs<0>(src, n_elems, bf16, dst, stream);
      return true;
    case 1:
      DequantizeAs<1>(src, n_elems, bf16, dst, stream);
      return true;
    case 2:
      DequantizeAs<2>(src, n_elems, bf16, dst, stream);
      return true;
    case 3:
      DequantizeAs<3>(src, n_elems, bf16, dst, stream);
      return true;
    case 6:
      DequantizeAs<6>(src, n_elems, bf16, dst, stream);
      return true;
    case 7:
      DequantizeAs<7>(src, n_elems, bf16, dst, stream);
      return true;
    case 8:
      DequantizeAs<8>(src, n_elems, bf16, dst, stream);
      return true;
    case 11:
      DequantizeAs<11>(src, n_elems, bf16, dst, stream);
      return true;
    case 12:
      DequantizeAs<12>(src, n_elems, bf16, dst, stream);
      return true;
    case 13:
      DequantizeAs<13>(src, n_elems, bf16, dst, stream);
      return true;
    case 14:
      DequantizeAs<14>(src, n_elems, bf16, dst, stream);
      return true;
    case 30:
      DequantizeAs<30>(src, n_elems, bf16, dst, stream);
      return true;
    default:
      return false;
  }
}

void LaunchToHalf(const float* x, int64_t count, bool bf16, void* out, cudaStream_t stream) {
  if (count <= 0) return;
  const int blocks = std::min(Blocks(count), 65535 * 8);
  if (bf16) {
    ToHalfKernel<true><<<blocks, kThreads, 0, stream>>>(x, count, out);
  } else {
    ToHalfKernel<false><<<blocks, kThreads, 0, stream>>>(x, count, out);
  }
}

void LaunchEmbed(const void* table, bool bf16, const int32_t* ids, int n, int dim, float* out,
                 cudaStream_t stream) {
  if (n <= 0) return;
  if (bf16) {
    EmbedKernel<true><<<n, kThreads, 0, stream>>>(table, ids, dim, out);
  } else {
    EmbedKernel<false><<<n, kThreads, 0, stream>>>(table, ids, dim, out);
  }
}

void LaunchRmsNorm(const float* x, const float* weight, int n, int dim, float eps, float* out,
                   cudaStream_t stream) {
  if (n <= 0) return;
  const int threads = dim >= 1024 ? 1024 : (dim >= 256 ? 256 : 64);
  RmsNormKernel<<<n, threads, 0, stream>>>(x, weight, dim, eps, out);
}

void LaunchRope(float* x, const int32_t* pos, int n, int n_heads, int head_dim, const float* freq,
                cudaStream_t stream) {
  const int64_t pairs = static_cast<int64_t>(n) * n_heads * (head_dim / 2);
  if (pairs <= 0) return;
  RopeKernel<<<std::min(Blocks(pairs), 65535 * 8), kThreads, 0, stream>>>(x, pos, pairs, n_heads,
                                                                          head_dim, freq);
}

void LaunchSiluMul(const float* gate, const float* up, int64_t count, float* out,
                   cudaStream_t stream) {
  if (count <= 0) return;
  SiluMulKernel<<<std::min(Blocks(count), 65535 * 8), kThreads, 0, stream>>>(gate, up, count, out);
}

void LaunchAdd(float* x, const float* y, int64_t count, cudaStream_t stream) {
  if (count <= 0) return;
  AddKernel<<<std::min(Blocks(count), 65535 * 8), kThreads, 0, stream>>>(x, y, count);
}

void LaunchWriteKvRows(int block_tokens, int kv_dim, bool f16, void* pool, const KvWriteRow* rows,
                       int n_rows, cudaStream_t stream) {
  const int64_t count = static_cast<int64_t>(n_rows) * kv_dim;
  if (count <= 0) return;
  const int blocks = std::min(Blocks(count), 65535 * 8);
  if (f16) {
    WriteKvRowsKernel<<<blocks, kThreads, 0, stream>>>(block_tokens, kv_dim,
                                                       static_cast<__half*>(pool), rows, count);
  } else {
    WriteKvRowsKernel<<<blocks, kThreads, 0, stream>>>(block_tokens, kv_dim,
                                                       static_cast<float*>(pool), rows, count);
  }
}

int AttentionSplits(const AttentionShape& shape, int n_items, int multiprocessors,
                    int* split_tokens) {
  const int group = shape.n_heads / shape.n_kv_heads;
  const int64_t base_blocks =
      static_cast<int64_t>(n_items) * shape.n_kv_heads * ((group + kAttHeads - 1) / kAttHeads);
  // Enough blocks for two waves over the SMs, but no split shorter than 64 keys.
  const int64_t want = (2LL * std::max(multiprocessors, 1) + base_blocks - 1) / base_blocks;
  const int most = std::max(1, (shape.max_len + 63) / 64);
  const int splits = static_cast<int>(std::clamp<int64_t>(want, 1, most));
  int tokens = (shape.max_len + splits - 1) / splits;
  tokens = (tokens + 15) / 16 * 16;
  *split_tokens = tokens;
  return (shape.max_len + tokens - 1) / tokens;
}

int64_t AttentionScratchFloats(const AttentionShape& shape, int n_items, int splits) {
  if (splits <= 1) return 0;
  return static_cast<int64_t>(n_items) * shape.n_heads * splits * (shape.head_dim + 2);
}

namespace {

template <typename T>
void LaunchAttentionT(const AttentionShape& shape, const T* pool, const int32_t* tables,
                      const AttentionItem* items, int n_items, int splits, int split_tokens,
                      const float* q, float* scratch, float* out, cudaStream_t stream) {
  const int group = shape.n_heads / shape.n_kv_heads;
  const dim3 grid(n_items, shape.n_kv_heads * ((group + kAttHeads - 1) / kAttHeads), splits);
  const float scale = 1.0f / sqrtf(static_cast<float>(shape.head_dim));
  const int threads = kAttWarps * 32;
  if (shape.head_dim <= 32) {
    AttentionSplitKernel<1, T><<<grid, threads, 0, stream>>>(shape, pool, tables, items, splits,
                                                             split_tokens, scale, q, scratch, out);
  } else if (shape.head_dim <= 64) {
    AttentionSplitKernel<2, T><<<grid, threads, 0, stream>>>(shape, pool, tables, items, splits,
                                                             split_tokens, scale, q, scratch, out);
  } else if (shape.head_dim <= 128) {
    AttentionSplitKernel<4, T><<<grid, threads, 0, stream>>>(shape, pool, tables, items, splits,
                                                             split_tokens, scale, q, scratch, out);
  } else {
    AttentionSplitKernel<8, T><<<grid, threads, 0, stream>>>(shape, pool, tables, items, splits,
                                                             split_tokens, scale, q, scratch, out);
  }
}

}  // namespace

void LaunchAttention(const AttentionShape& shape, bool f16, const void* pool, const int32_t* tables,
                     const AttentionItem* items, int n_items, int splits, int split_tokens,
                     const float* q, float* scratch, float* out, cudaStream_t stream) {
  if (n_items <= 0) return;
  if (f16) {
    LaunchAttentionT(shape, static_cast<const __half*>(pool), tables, items, n_items, splits,
                     split_tokens, q, scratch, out, stream);
  } else {
    LaunchAttentionT(shape, static_cast<const float*>(pool), tables, items, n_items, splits,
                     split_tokens, q, scratch, out, stream);
  }
  if (splits > 1) {
    AttentionMergeKernel<<<dim3(n_items, shape.n_heads), std::min(shape.head_dim, 256), 0,
                           stream>>>(shape, items, splits, scratch, out);
  }
}

}  // namespace kvshare::cuda
