// Attention over one chunk of positions (at most kMaxChunk) for a set of rows, per SIMD level (used
// by AttentionRunner).
//
// A row is one query head of one query position. All rows of a call share one KV head and one
// chunk [p0, p1) of the sequence's positions; row r sees positions [p0, min(p1, limit[r] + 1))
// (causal; limit[r] >= p0). Its partial result is the max score m[r], the sum of
// exp(score - m) l[r], and o[r][head_dim] = sum_p exp(score_p - m) * V_p (not normalized).
// Chunks merge in position order (MergePartial).
//
// f32, f16 and int8 pools (and every type at the scalar level) are read on one path:
// GatherChunk gives each position's K and V as fp32 — pointers into an f32 pool, or rows
// dequantised (per SIMD level) into the call's scratch — and the score / softmax / V loops run
// over those. The AVX2 and AVX-512 levels read int4 blocks in place instead (kv_chunk.h
// Int4Runs): K's per-channel scale and min folded into the query once per block, V's per-group
// ones into the softmax weights, the nibbles unpacked as they are read; int4a blocks are read
// the same way (their K codes built from the bit planes); kv_type_attention_test holds both
// to the reference.
//
// A row's result depends only on its own query, limit and the chunk — not on the other rows in
// the call — so a query gives the same bits whether it runs in a prefill tile, alone in a
// decode step, or with its chunks spread over threads.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/backend.h"

namespace kvshare::cpu {

constexpr int kMaxChunk = 256;

struct ChunkRows {
  const KvGeometry* geometry;
  const void* pool;
  const int32_t* block_table;
  const void* tail;   // int4: the sequence's f16 tail (block 0 and the partial block)
  int stored;         // positions the sequence has stored (int4: which blocks are quantised)
  float* kv_scratch;  // 2 * kMaxChunk * head_dim floats: dequantised K then V (int4: a block)
  int kv_head;
  int p0, p1;
  float scale;  // 1 / sqrt(head_dim)
  int n_rows;
  const float* const* q;  // [n_rows] -> head_dim floats
  const int* limit;       // [n_rows] last position each row sees
  float* scores;          // scratch: n_rows * (p1 - p0) + 16 floats
  float* m;               // [n_rows]
  float* l;               // [n_rows]
  float* o;               // [n_rows][head_dim]
  // int4 and int4a on the AVX2 / AVX-512 levels: read the blocks in place (true) or gather them
  // to fp32 like the other types (CpuBackendOptions::int4_in_place).
  bool int4_in_place = true;
};

// K and V (head_dim fp32 each) of positions p0 + i, i < p1 - p0, for the call's KV head.
struct ChunkKv {
  const float* k[kMaxChunk];
  const float* v[kMaxChunk];
};

#define KVSHARE_DECLARE_ATTENTION_KERNELS \
  void AttendChunk(const ChunkRows& a);   \
  void GatherChunk(const ChunkRows& a, ChunkKv* kv);

namespace avx512 {
KVSHARE_DECLARE_ATTENTION_KERNELS
}
namespace avx2 {
KVSHARE_DECLARE_ATTENTION_KERNELS
}
namespace scalar {
KVSHARE_DECLARE_ATTENTION_KERNELS
}

// Row r of (m, l, o) <- itself merged with the later chunk's (m2, l2, o2), for n_rows rows.
void MergePartial(int n_rows, int head_dim, float* m, float* l, float* o, const float* m2,
                  const float* l2, const float* o2);

}  // namespace kvshare::cpu
