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

// Fills `plan` for `seqs` (kernels/backend.h AttentionSeq; sequences with n_q <= 0 take no
// part). tiled: whether the tiled kernel may be used (head_dim <= kTileMaxHeadDim).
inline void PlanAttention(const AttentionSeq* seqs, int n_seqs, int block_tokens, int group,
                          bool tiled, AttentionPlan* plan) {
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
