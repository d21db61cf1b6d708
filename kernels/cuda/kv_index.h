// Index arithmetic the CUDA kernels share with host code: where a position's K/V row sits in
// the paged pool, the rows of a batched WriteKv, and the work items of paged attention (one
// query row, or a tile of consecutive query rows of one sequence). The functions are
// __host__ __device__ under nvcc and plain inline C++ elsewhere, so the kernels
// (cuda_kernels.cu), the backend's host planning (attention_plan.h) and CPU-side tests
// (tests/cuda/kv_index_test.cc) compute the very same offsets. No CUDA header is needed here.
//
// Pool layout (kernels/kv_type.h, f32 and f16): block b holds K [block_tokens][kv_dim] then
// V [block_tokens][kv_dim], elements of the pool's type, starting at element b * 2 *
// block_tokens * kv_dim.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define KVSHARE_HD __host__ __device__ __forceinline__
#else
#define KVSHARE_HD inline
#endif

namespace kvshare::cuda {

// Element offset of the K row of the position in `slot` of pool block `block`; its V row is
// VPlaneOffset further on.
KVSHARE_HD int64_t KvSlotOffset(int32_t block, int slot, int block_tokens, int kv_dim) {
  return static_cast<int64_t>(block) * 2 * block_tokens * kv_dim +
         static_cast<int64_t>(slot) * kv_dim;
}

// Element offset of position `pos`'s K row through a block table (block i of the sequence
// holds positions [i * block_tokens, (i + 1) * block_tokens)).
KVSHARE_HD int64_t KvRowOffset(const int32_t* table, int pos, int block_tokens, int kv_dim) {
  return KvSlotOffset(table[pos / block_tokens], pos % block_tokens, block_tokens, kv_dim);
}

KVSHARE_HD int64_t VPlaneOffset(int block_tokens, int kv_dim) {
  return static_cast<int64_t>(block_tokens) * kv_dim;
}

// One position of a batched WriteKv: its K and V rows (kv_dim floats each, device memory) go to
// slot `slot` of pool block `block`. A layer's writes for the whole batch are one array of
// these: one upload and one launch, whatever the number of sequences.
struct KvWriteRow {
  const float* k;
  const float* v;
  int32_t block;
  int32_t slot;
};
static_assert(sizeof(KvWriteRow) == 24, "KvWriteRow is uploaded as raw bytes");

// The rows of one sequence's WriteKv call (positions start_pos .. start_pos + n - 1, K/V rows
// at k, v with kv_dim floats each), appended to `out` (a container of KvWriteRow).
template <typename Rows>
void AppendKvWriteRows(const int32_t* table, int block_tokens, int kv_dim, int start_pos, int n,
                       const float* k, const float* v, Rows* out) {
  for (int t = 0; t < n; ++t) {
    const int p = start_pos + t;
    const int64_t off = static_cast<int64_t>(t) * kv_dim;
    out->push_back(KvWriteRow{k + off, v + off, table[p / block_tokens], p % block_tokens});
  }
}

// Element e of a batched write (row e / kv_dim, channel e % kv_dim): the pool element offset of
// its K value (V: + VPlaneOffset) and the index of its source within the row.
KVSHARE_HD int64_t KvWriteDest(const KvWriteRow& r, int block_tokens, int kv_dim, int channel) {
  return KvSlotOffset(r.block, r.slot, block_tokens, kv_dim) + channel;
}

// One query row of a paged attention call: output row `row` (of q and out), whose sequence's
// block table starts at tables[table_offset], at position `pos` (it attends to [0, pos]).
struct AttentionItem {
  int32_t row;
  int32_t pos;
  int32_t table_offset;
  int32_t pad;
};

// A tile of a prefill: n_rows consecutive query rows of one sequence, rows [row, row + n_rows)
// at positions [pos, pos + n_rows), sharing every K/V tile they read (flash-attention style).
// Row j of the tile attends to [0, pos + j].
struct AttentionTile {
  int32_t row;
  int32_t pos;
  int32_t n_rows;
  int32_t table_offset;
};

// Keys per K/V tile of the tiled kernel (one per lane of a warp), and the query vectors (query
// row x query head pairs) one thread block of it keeps: kTileWarps warps of kTileVecsPerWarp.
constexpr int kTileKeys = 32;
constexpr int kTileWarps = 8;
constexpr int kTileVecsPerWarp = 8;
constexpr int kTileVecs = kTileWarps * kTileVecsPerWarp;  // 64
// Query heads one block of the tiled kernel serves (consecutive heads of one KV head's group).
constexpr int kTileMaxHeads = 4;
// Sequences with at least this many query rows in a call go to the tiled kernel.
constexpr int kTileMinRows = 8;
// The tiled kernel keeps K/V tiles in shared memory as fp32: head_dim up to this.
constexpr int kTileMaxHeadDim = 128;

// Query heads per block of the tiled kernel for a GQA group of `group` query heads per KV head.
KVSHARE_HD int TileHeads(int group) { return group < kTileMaxHeads ? group : kTileMaxHeads; }

// Query vector v (0 .. kTileVecs-1) of a block serving `heads` heads and tile rows: which tile
// row and which of the block's heads it is (rows vary slowest, so a warp's vectors are
// neighbouring rows with close causal limits). Past rows * heads it is idle.
KVSHARE_HD void TileVector(int v, int heads, int* tile_row, int* head) {
  *tile_row = v / heads;
  *head = v % heads;
}

// The grid's second dimension for the tiled kernel: KV head x chunk of its group's heads.
KVSHARE_HD int TileHeadChunks(int group) {
  const int heads = TileHeads(group);
  return (group + heads - 1) / heads;
}

// The first query head, and how many heads, block column `y` of the tiled kernel serves.
KVSHARE_HD void TileHeadRange(int y, int group, int* kv_head, int* first_head, int* n_heads) {
  const int heads = TileHeads(group), chunks = TileHeadChunks(group);
  *kv_head = y / chunks;
  *first_head = *kv_head * group + (y % chunks) * heads;
  const int end = *kv_head * group + group;
  *n_heads = end - *first_head < heads ? end - *first_head : heads;
}

}  // namespace kvshare::cuda
