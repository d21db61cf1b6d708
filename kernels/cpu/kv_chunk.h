// GatherChunk, written once for every SIMD level: the K/V of a chunk's positions for one KV
// head as fp32 rows (kernels/kv_type.h layouts). f32 pools are read in place; the compact
// types are dequantised into the call's scratch, so the attention loops after it are the same
// for every type. `Half` is the level's fp16 -> fp32 row converter (F16C / AVX-512 / scalar);
// the body is force-inlined into each level's GatherChunk so the compiler vectorises the int8
// and nibble loops for that level.
//
// The AVX2 and AVX-512 int4 and int4a paths do not gather: they read blocks in place (Int4Runs
// below). k4v3 is gathered (its K dequantised as int4's, its V from 3-bit codes) on every
// level, and int4a at the scalar level (its K from bit planes, its V as int4's) and for heads
// the in-place kernels do not take.
//
// Dequantised values equal kv_codec.h LoadKv's (the same products and sums of exact fp16
// values, up to the contraction of q * scale + min into one fma).
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/kv_codec.h"

namespace kvshare::cpu {

// Scratch GatherChunk needs, in floats, for a head of head_dim channels.
constexpr int64_t KvScratchFloats(int head_dim) { return (2LL * kMaxChunk + 2) * head_dim; }

// Byte lane i of kSpreadBits[x] holds bit i of x: one int4a plane byte (8 positions' bits)
// spread to 8 byte lanes, so a channel's codes for 8 positions build up in one uint64.
struct SpreadBitsTable {
  uint64_t of[256];
  constexpr SpreadBitsTable() : of() {
    for (int x = 0; x < 256; ++x) {
      for (int i = 0; i < 8; ++i) of[x] |= uint64_t((x >> i) & 1) << (8 * i);
    }
  }
};
inline constexpr SpreadBitsTable kSpreadBits{};

// int4a's K layout (kernels/kv_type.h), for every reader: the first bit plane of the KV head
// whose first channel is `head` — each head's widths sum to kKvInt4AMeanBits x head_dim planes
// of block_tokens / 8 bytes — and channel ch's width from the block's widths (two a byte).
inline const uint8_t* AllocatedKPlanes(const KvGeometry& g, const KvBlockLayout& lay,
                                       const uint8_t* block, int64_t head) {
  return block + lay.k + head * kKvInt4AMeanBits * (g.block_tokens / 8);
}
inline int AllocatedKWidth(const uint8_t* widths, int64_t ch) {
  return (widths[ch / 2] >> (4 * (ch % 2))) & 15;
}

// int4a: rows r0 .. r0+n-1 of one head's K (channels head .. head+hd-1) from the block's bit
// planes into k_out[n][hd]: per channel, 8 positions at a time (a byte of each plane).
inline void GatherAllocatedK(const KvGeometry& g, const uint8_t* block, int64_t head, int r0, int n,
                             float* k_out) {
  const int hd = g.head_dim, plane_bytes = g.block_tokens / 8;
  const KvBlockLayout lay(g);
  const auto* k_scale = reinterpret_cast<const uint16_t*>(block + lay.k_scale) + head;
  const auto* k_min = reinterpret_cast<const uint16_t*>(block + lay.k_min) + head;
  const uint8_t* widths = block + lay.k_bits;
  const uint8_t* plane = AllocatedKPlanes(g, lay, block, head);
  const int g0 = r0 / 8, g1 = (r0 + n + 7) / 8;
  for (int j = 0; j < hd; ++j) {
    const int64_t ch = head + j;
    const int b = AllocatedKWidth(widths, ch);
    const float s = Fp16ToFp32(k_scale[j]), m = Fp16ToFp32(k_min[j]);
    for (int gi = g0; gi < g1; ++gi) {
      uint64_t codes = 0;
      for (int bit = 0; bit < b; ++bit)
        codes |= kSpreadBits.of[plane[bit * plane_bytes + gi]] << bit;
      const int lo = std::max(0, r0 - 8 * gi), hi = std::min(8, r0 + n - 8 * gi);
      for (int i = lo; i < hi; ++i) {
        k_out[(8 * gi + i - r0) * hd + j] = static_cast<float>((codes >> (8 * i)) & 255) * s + m;
      }
    }
    plane += b * plane_bytes;
  }
}

template <class Half>
inline __attribute__((always_inline)) void GatherChunkT(const ChunkRows& a, ChunkKv* kv) {
  const KvGeometry& g = *a.geometry;
  const int hd = g.head_dim, bt = g.block_tokens;
  const int64_t c = g.kv_dim(), head = static_cast<int64_t>(a.kv_head) * hd;
  const KvBlockLayout lay(g);
  const auto* pool = static_cast<const uint8_t*>(a.pool);
  float* k_out = a.kv_scratch;
  float* v_out = k_out + static_cast<int64_t>(kMaxChunk) * hd;
  float* k_scale = v_out + static_cast<int64_t>(kMaxChunk) * hd;  // int4, k4v3: [hd] per block
  float* k_min = k_scale + hd;
  constexpr int kHalfGroup = kKvInt4Group / 2;
  for (int p = a.p0; p < a.p1;) {
    const int b = p / bt, r0 = p - b * bt;
    const int n = std::min(a.p1 - p, bt - r0);
    const int i0 = p - a.p0;
    const uint8_t* block = pool + a.block_table[b] * g.block_bytes();
    switch (g.type) {
      case KvType::kF32:
        for (int i = 0; i < n; ++i) {
          kv->k[i0 + i] = reinterpret_cast<const float*>(block + lay.k) + (r0 + i) * c + head;
          kv->v[i0 + i] = reinterpret_cast<const float*>(block + lay.v) + (r0 + i) * c + head;
        }
        break;
      case KvType::kF16:
        for (int i = 0; i < n; ++i) {
          const int64_t row = (r0 + i) * c + head;
          Half::Convert(reinterpret_cast<const uint16_t*>(block + lay.k) + row, hd,
                        k_out + (i0 + i) * hd);
          Half::Convert(reinterpret_cast<const uint16_t*>(block + lay.v) + row, hd,
                        v_out + (i0 + i) * hd);
        }
        break;
      case KvType::kInt8:
        for (int i = 0; i < n; ++i) {
          const int64_t row = (r0 + i) * c + head;
          const int64_t s = static_cast<int64_t>(r0 + i) * g.n_kv_heads + a.kv_head;
          const float ks = Fp16ToFp32(reinterpret_cast<const uint16_t*>(block + lay.k_scale)[s]);
          const float vs = Fp16ToFp32(reinterpret_cast<const uint16_t*>(block + lay.v_scale)[s]);
          const int8_t* kq = reinterpret_cast<const int8_t*>(block + lay.k) + row;
          const int8_t* vq = reinterpret_cast<const int8_t*>(block + lay.v) + row;
          float* kd = k_out + (i0 + i) * hd;
          float* vd = v_out + (i0 + i) * hd;
          for (int j = 0; j < hd; ++j) kd[j] = static_cast<float>(kq[j]) * ks;
          for (int j = 0; j < hd; ++j) vd[j] = static_cast<float>(vq[j]) * vs;
        }
        break;
      case KvType::kInt4:
      case KvType::kInt4A:
      case KvType::kK4V3: {
        if (const uint16_t* slot = TailSlot(g, a.tail, a.stored, b)) {  // f16 in the tail
          for (int i = 0; i < n; ++i) {
            const int64_t row = (r0 + i) * c + head;
            Half::Convert(slot + row, hd, k_out + (i0 + i) * hd);
            Half::Convert(slot + static_cast<int64_t>(bt) * c + row, hd, v_out + (i0 + i) * hd);
          }
          break;
        }
        const bool v3 = g.type == KvType::kK4V3;
        const int v_group = v3 ? kKvV3Group : kKvInt4Group;
        const int64_t v_groups = c / v_group;
        const bool allocated = g.type == KvType::kInt4A;
        if (allocated) {
          GatherAllocatedK(g, block, head, r0, n, k_out + i0 * hd);
        } else {  // int4's K scales, once per run
          Half::Convert(reinterpret_cast<const uint16_t*>(block + lay.k_scale) + head, hd, k_scale);
          Half::Convert(reinterpret_cast<const uint16_t*>(block + lay.k_min) + head, hd, k_min);
        }
        for (int i = 0; i < n; ++i) {
          const uint8_t* kq = block + lay.k + ((r0 + i) * c + head) / 2;
          const int64_t vs0 = (r0 + i) * v_groups + head / v_group;
          const auto* v_scale = reinterpret_cast<const uint16_t*>(block + lay.v_scale) + vs0;
          const auto* v_min = reinterpret_cast<const uint16_t*>(block + lay.v_min) + vs0;
          float* kd = k_out + (i0 + i) * hd;
          float* vd = v_out + (i0 + i) * hd;
          for (int gi = 0; gi < hd / kKvInt4Group && !allocated; ++gi) {
            const uint8_t* kb = kq + gi * kHalfGroup;
            const float* ksg = k_scale + gi * kKvInt4Group;
            const float* kmg = k_min + gi * kKvInt4Group;
            float* kdg = kd + gi * kKvInt4Group;
            for (int j = 0; j < kHalfGroup; ++j) {
              kdg[j] = static_cast<float>(kb[j] & 15) * ksg[j] + kmg[j];
              kdg[j + kHalfGroup] =
                  static_cast<float>(kb[j] >> 4) * ksg[j + kHalfGroup] + kmg[j + kHalfGroup];
            }
          }
          if (v3) {
            const uint8_t* vq = block + lay.v + vs0 * kKvV3GroupBytes;
            for (int gi = 0; gi < hd / kKvV3Group; ++gi) {
              const float vs = Fp16ToFp32(v_scale[gi]), vm = Fp16ToFp32(v_min[gi]);
              float* vdg = vd + gi * kKvV3Group;
              // Codes first, in bytes, then one vectorisable pass to floats.
              uint8_t code[kKvV3Group];
              Unpack3BitGroup(vq + gi * kKvV3GroupBytes, code);
              for (int c2 = 0; c2 < kKvV3Group; ++c2) {
                vdg[c2] = static_cast<float>(code[c2]) * vs + vm;
              }
            }
            continue;
          }
          const uint8_t* vq = block + lay.v + ((r0 + i) * c + head) / 2;
          for (int gi = 0; gi < hd / kKvInt4Group; ++gi) {
            const uint8_t* vb = vq + gi * kHalfGroup;
            const float vs = Fp16ToFp32(v_scale[gi]), vm = Fp16ToFp32(v_min[gi]);
            float* vdg = vd + gi * kKvInt4Group;
            for (int j = 0; j < kHalfGroup; ++j) {
              vdg[j] = static_cast<float>(vb[j] & 15) * vs + vm;
              vdg[j + kHalfGroup] = static_cast<float>(vb[j] >> 4) * vs + vm;
            }
          }
        }
        break;
      }
    }
    if (g.type != KvType::kF32) {
      for (int i = 0; i < n; ++i) {
        kv->k[i0 + i] = k_out + (i0 + i) * hd;
        kv->v[i0 + i] = v_out + (i0 + i) * hd;
      }
    }
    p += n;
  }
}

// The int4 fast paths (attention_avx2.cc, attention_avx512_int4.cc) read the blocks in place
// instead of through GatherChunk: a chunk's positions cut at block boundaries, each run either one
// quantised block (K scale/min folded into the query once per run, V scale/min into the softmax
// weight per position) or an f16 slot of the sequence's tail (block 0 or the partial block).
struct Int4Run {
  const uint8_t* block;  // the quantised block; nullptr: the run lies in an f16 tail slot
  // block == nullptr: the slot's K and V rows 0 at the chunk's KV head (row stride kv_dim).
  const uint16_t *f16_k, *f16_v;
  int row0;   // its first position's row in the block (and in the slot)
  int i0, n;  // chunk positions [i0, i0 + n), i.e. sequence positions p0 + i0...
};

// At most this many runs in a chunk (any block_tokens >= 1).
constexpr int kMaxInt4Runs = kMaxChunk + 1;

// Fills runs[] for the chunk [a.p0, a.p1) of an int4 pool; returns how many.
inline int Int4Runs(const ChunkRows& a, Int4Run* runs) {
  const KvGeometry& g = *a.geometry;
  const int bt = g.block_tokens;
  const int64_t head = static_cast<int64_t>(a.kv_head) * g.head_dim;
  const auto* pool = static_cast<const uint8_t*>(a.pool);
  int count = 0;
  for (int p = a.p0; p < a.p1;) {
    const int b = p / bt, r0 = p - b * bt;
    const int n = std::min(a.p1 - p, bt - r0);
    Int4Run& run = runs[count++];
    run = {nullptr, nullptr, nullptr, r0, p - a.p0, n};
    if (const uint16_t* slot = TailSlot(g, a.tail, a.stored, b)) {
      run.f16_k = slot + head;
      run.f16_v = slot + static_cast<int64_t>(bt) * g.kv_dim() + head;
    } else {
      run.block = pool + a.block_table[b] * g.block_bytes();
    }
    p += n;
  }
  return count;
}

}  // namespace kvshare::cpu
