// The tiled prefill attention kernel (cuda_kernels.h LaunchAttentionTiles); its index
// arithmetic is kv_index.h's, tested on the CPU by tests/cuda/kv_index_test.cc.
#include <cuda_fp16.h>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/kv_index.h"

namespace kvshare::cuda {
namespace {

// ---- Tiled prefill attention (flash-attention style).
//
// One thread block per (tile of query rows, KV head, chunk of that KV head's query heads):
// its kTileVecs (row, head) query vectors live in registers, kTileVecsPerWarp per warp, lane l
// holding dims l, l+32, .... The block walks the keys [0, last row's position] in tiles of
// kTileKeys positions; each K/V tile is read from the pool once into shared memory and used by
// every vector. Per vector and tile, a warp forms the tile's scores (lane j keeps key j's),
// takes their max, rescales its running state once and adds the tile's weighted V rows: the
// online softmax of the split kernel, a tile at a time. Keys past a vector's position are
// masked (causal); a tile wholly past it is skipped.
template <int kPerLane, typename T>
__global__ void __launch_bounds__(kTileWarps * 32)
    AttentionTileKernel(AttentionShape s, const T* pool, const int32_t* tables,
                        const AttentionTile* tiles, float scale, const float* q, float* out) {
  constexpr int kDims = kPerLane * 32;
  constexpr int kV = kTileVecsPerWarp;
  __shared__ float sk[kTileKeys][kDims], sv[kTileKeys][kDims];

  const AttentionTile tile = tiles[blockIdx.x];
  const int hd = s.head_dim;
  const int group = s.n_heads / s.n_kv_heads;
  int kvh, h0, nh;
  TileHeadRange(blockIdx.y, group, &kvh, &h0, &nh);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int kv_dim = s.n_kv_heads * hd;
  const int32_t* table = tables + tile.table_offset;
  const int last = tile.pos + tile.n_rows - 1;  // the last key any row of the tile reads

  float qr[kV][kPerLane], acc[kV][kPerLane], m[kV], l[kV];
  int vpos[kV];
#pragma unroll
  for (int v = 0; v < kV; ++v) {
    int r, h;
    TileVector(warp * kV + v, nh, &r, &h);
    // Idle vectors get position -1: every tile is past them.
    vpos[v] = r < tile.n_rows ? tile.pos + r : -1;
    m[v] = -INFINITY;
    l[v] = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      qr[v][i] = (vpos[v] >= 0 && d < hd)
                     ? q[(static_cast<int64_t>(tile.row + r) * s.n_heads + h0 + h) * hd + d] * scale
                     : 0.0f;
      acc[v][i] = 0.0f;
    }
  }

  for (int t0 = 0; t0 <= last; t0 += kTileKeys) {
    __syncthreads();  // every warp is done with the previous tile
    for (int idx = threadIdx.x; idx < kTileKeys * kDims; idx += blockDim.x) {
      const int kk = idx / kDims, d = idx % kDims, p = t0 + kk;
      float kx = 0.0f, vx = 0.0f;
      if (p <= last && d < hd) {
        const int64_t off = KvRowOffset(table, p, s.block_tokens, kv_dim) + kvh * hd + d;
        kx = KvLoad(pool + off);
        vx = KvLoad(pool + off + VPlaneOffset(s.block_tokens, kv_dim));
      }
      sk[kk][d] = kx;
      sv[kk][d] = vx;
    }
    __syncthreads();
#pragma unroll
    for (int v = 0; v < kV; ++v) {
      if (t0 > vpos[v]) continue;  // warp-uniform: the vector is the warp's
      const int n_keys = min(kTileKeys, vpos[v] - t0 + 1);
      float mine = -INFINITY;  // lane j: key t0 + j's score
      for (int kk = 0; kk < n_keys; ++kk) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) dot += qr[v][i] * sk[kk][lane + 32 * i];
        dot = WarpSum(dot);
        if (lane == kk) mine = dot;
      }
      const float m_new = fmaxf(m[v], WarpMax(mine));
      const float corr = MergeWeight(m[v], m_new);
      const float p = lane < n_keys ? expf(mine - m_new) : 0.0f;
      l[v] = l[v] * corr + WarpSum(p);
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) acc[v][i] *= corr;
      for (int kk = 0; kk < n_keys; ++kk) {
        const float pk = __shfl_sync(0xffffffffu, p, kk);
#pragma unroll
        for (int i = 0; i < kPerLane; ++i) acc[v][i] += pk * sv[kk][lane + 32 * i];
      }
      m[v] = m_new;
    }
  }

#pragma unroll
  for (int v = 0; v < kV; ++v) {
    if (vpos[v] < 0) continue;
    int r, h;
    TileVector(warp * kV + v, nh, &r, &h);
    float* o = out + (static_cast<int64_t>(tile.row + r) * s.n_heads + h0 + h) * hd;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < hd) o[d] = acc[v][i] / l[v];
    }
  }
}

}  // namespace

namespace {

template <typename T>
void LaunchTilesT(const AttentionShape& shape, const T* pool, const int32_t* tables,
                  const AttentionTile* tiles, int n_tiles, const float* q, float* out,
                  cudaStream_t stream) {
  const int group = shape.n_heads / shape.n_kv_heads;
  const dim3 grid(n_tiles, shape.n_kv_heads * TileHeadChunks(group));
  const float scale = 1.0f / sqrtf(static_cast<float>(shape.head_dim));
  const int threads = kTileWarps * 32;
  if (shape.head_dim <= 32) {
    AttentionTileKernel<1, T>
        <<<grid, threads, 0, stream>>>(shape, pool, tables, tiles, scale, q, out);
  } else if (shape.head_dim <= 64) {
    AttentionTileKernel<2, T>
        <<<grid, threads, 0, stream>>>(shape, pool, tables, tiles, scale, q, out);
  } else {
    AttentionTileKernel<4, T>
        <<<grid, threads, 0, stream>>>(shape, pool, tables, tiles, scale, q, out);
  }
}

}  // namespace

void LaunchAttentionTiles(const AttentionShape& shape, bool f16, const void* pool,
                          const int32_t* tables, const AttentionTile* tiles, int n_tiles,
                          const float* q, float* out, cudaStream_t stream) {
  if (n_tiles <= 0) return;
  if (f16) {
    LaunchTilesT(shape, static_cast<const __half*>(pool), tables, tiles, n_tiles, q, out, stream);
  } else {
    LaunchTilesT(shape, static_cast<const float*>(pool), tables, tiles, n_tiles, q, out, stream);
  }
}

}  // namespace kvshare::cuda
