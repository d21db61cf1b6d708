// Attention over one chunk of positions (at most kMaxChunk) for a set of rows, per SIMD level (used
// by AttentionRunner).
//
// A row is one query head of one query position. All rows of a call share one KV head and one
// chunk [p0, p1) of the sequence's positions; row r sees positions [p0, min(p1, limit[r] + 1))
// (causal; limit[r] >= p0). Its partial result is the max score m[r], the sum of
// exp(score - m) l[r], and o[r][head_dim] = sum_p exp(score_p - m) * V_p (not normalized).
// Chunks merge in position order (MergePartial).
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
  const float* pool;
  const int32_t* block_table;
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
};

#define KVSHARE_DECLARE_ATTENTION_KERNELS void AttendChunk(const ChunkRows& a);

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

// keys[i] = position p0 + i's K for kv head `kv_head`, i < p1 - p0 (one division per block).
inline void ChunkKeys(const KvGeometry& g, const float* pool, const int32_t* table, int kv_head,
                      int p0, int p1, const float** keys) {
  const int64_t kv_dim = static_cast<int64_t>(g.n_kv_heads) * g.head_dim;
  for (int p = p0; p < p1;) {
    const int block = p / g.block_tokens;
    const int in_block = p - block * g.block_tokens;
    const int n = std::min(p1 - p, g.block_tokens - in_block);
    const float* k = pool + table[block] * g.block_floats() + in_block * kv_dim +
                     static_cast<int64_t>(kv_head) * g.head_dim;
    for (int i = 0; i < n; ++i) keys[p - p0 + i] = k + i * kv_dim;
    p += n;
  }
}

// Position p's K for kv head `kv_head` (its V is block_tokens * kv_dim floats further).
inline const float* KeyAt(const KvGeometry& g, const float* pool, const int32_t* table, int p,
                          int kv_head) {
  return pool + table[p / g.block_tokens] * g.block_floats() +
         (static_cast<int64_t>(p % g.block_tokens) * g.n_kv_heads + kv_head) * g.head_dim;
}

}  // namespace kvshare::cpu
