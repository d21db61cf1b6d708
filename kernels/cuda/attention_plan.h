// Host-side planning of the CUDA backend's paged attention and its RoPE frequencies: which
// query rows go to the tiled prefill kernel and which to the per-row (flash-decoding) kernel,
// packed with the block tables into one array for one upload. Plain C++ (no CUDA header), so
// CPU-side tests (tests/cuda/kv_index_test.cc) check the very plan the backend launches.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cuda/kv_index.h"

namespace kvshare::cuda {

// The work of one Attention call. Sequences with at least kTileMinRows query rows (prefill)
// are cut into tiles of rows_per_tile rows; the other rows (decode) are items of their own.
struct AttentionPlan {
  std::vector<int32_t> tables;  // every sequence's block table prefix, back to back
  std::vector<AttentionItem> items;
  std::vector<AttentionTile> tiles;
  int rows_per_tile = 0;
  int items_max_len = 0;  // longest attended length (pos + 1) over the items
  int tiles_max_len = 0;  // over the tiles' last rows
};

// Query rows per tile for a GQA group of `group` query heads per KV head: a block keeps
// kTileVecs (row, head) vectors, so 64, 32, 21 or 16 rows for 1, 2, 3 or >= 4 heads.
inline int TileRows(int group) { return kTileVecs / TileHeads(group); }

// Contexts at least this long go to the tiled kernel even when its grid is small: the per-row
// kernel would read each K/V row once per query row.
constexpr int kTileLongContext = 1024;

// Fills `plan` for `seqs` (kernels/backend.h AttentionSeq; sequences with n_q <= 0 take no
// part). tiled: whether the tiled kernel may be used (head_dim <= kTileMaxHeadDim). When the
// tiles would make fewer than min_blocks thread blocks (n_kv_heads x head chunks each) and
// every tiled context is shorter than kTileLongContext, the rows go to the per-row kernel
// instead: short contexts are cheap to re-read, and its grid fills the GPU (min_blocks: the
// SM count; 0 keeps every tile).
inline void PlanAttention(const AttentionSeq* seqs, int n_seqs, int block_tokens, int group,
                          int n_kv_heads, bool tiled, int min_blocks, AttentionPlan* plan) {
  plan->tables.clear();
  plan->items.clear();
  plan->tiles.clear();
  plan->rows_per_tile = TileRows(group);
  plan->items_max_len = plan->tiles_max_len = 0;
  for (int s = 0; s < n_seqs; ++s) {
    const AttentionSeq& a = seqs[s];
    if (a.n_q <= 0) continue;
    const int len = a.start_pos + a.n_q;
    const int needed = (len + block_tokens - 1) / block_tokens;
    const int blocks = a.n_blocks < needed ? a.n_blocks : needed;
    const int offset = static_cast<int>(plan->tables.size());
    plan->tables.insert(plan->tables.end(), a.block_table, a.block_table + blocks);
    if (tiled && a.n_q >= kTileMinRows) {
      for (int j = 0; j < a.n_q; j += plan->rows_per_tile) {
        const int n = a.n_q - j < plan->rows_per_tile ? a.n_q - j : plan->rows_per_tile;
        plan->tiles.push_back(AttentionTile{a.q_row + j, a.start_pos + j, n, offset});
      }
      if (len > plan->tiles_max_len) plan->tiles_max_len = len;
    } else {
      for (int j = 0; j < a.n_q; ++j) {
        plan->items.push_back(AttentionItem{a.q_row + j, a.start_pos + j, offset, 0});
      }
      if (len > plan->items_max_len) plan->items_max_len = len;
    }
  }
  const int64_t blocks =
      static_cast<int64_t>(plan->tiles.size()) * n_kv_heads * TileHeadChunks(group);
  if (!plan->tiles.empty() && blocks < min_blocks && plan->tiles_max_len < kTileLongContext) {
    for (const AttentionTile& t : plan->tiles) {
      for (int j = 0; j < t.n_rows; ++j) {
        plan->items.push_back(AttentionItem{t.row + j, t.pos + j, t.table_offset, 0});
      }
    }
    if (plan->tiles_max_len > plan->items_max_len) plan->items_max_len = plan->tiles_max_len;
    plan->tiles.clear();
    plan->tiles_max_len = 0;
  }
}

// RoPE inverse frequencies, freq[i / 2] for each even i < head_dim, by the reference's exact
// fp32 expression (kernels/cpu/reference.cc Rope), computed on the host and uploaded: the
// device's powf is not correctly rounded, and at position 8191 one ulp of the frequency moves
// the angle by ~5e-4 rad.
inline void RopeInverseFrequencies(int head_dim, float theta, float* freq) {
  for (int i = 0; i < head_dim; i += 2) {
    freq[i / 2] = 1.0f / powf(theta, i / static_cast<float>(head_dim));
  }
}

}  // namespace kvshare::cuda
