// The paged, layer-aliased KV cache (docs/ARCHITECTURE.md).
//
// One pool of fixed-size blocks, not tied to a layer: a block holds K and V of `block_tokens`
// positions of one layer of one sequence, stored as the pool's KvType (layouts:
// kernels/kv_type.h). The type belongs to the owning layer; a sharing layer reads its source's
// blocks as they are. Today the type is uniform across layers; a per-layer plan (issue 17)
// needs one block pool per type behind LayerGeometry(), which is what callers already ask.
// An int4 pool also gives each sequence an f16 *tail* per owning layer (its partial block,
// quantised into the pool when it fills), allocated with the sequence's first blocks and not
// counted in the pool's bytes: bytes_per_token() is exactly what the pool's blocks hold. Each
// sequence has a block table per *owning* layer of its strategy; a sharing layer resolves to its
// source's table ("the layer-to-cache mapping lives in the cache; no kernel knows about
// sharing"). Sequences with different strategies share the pool. Growing a sequence allocates
// blocks for every owning layer or none (all-or-nothing); when the pool is short the status is
// RESOURCE_EXHAUSTED and nothing already stored is touched.
//
// Not thread-safe: owned and driven by one engine thread.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/strategy/sharing_strategy.h"
#include "kernels/backend.h"

namespace kvshare {

using SeqId = int64_t;

class KvCache {
 public:
  // A pool of `num_blocks` blocks of geometry `g` allocated from `backend`.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(Backend& backend, KvGeometry g,
                                                         int64_t num_blocks);

  const KvGeometry& geometry() const { return geometry_; }
  // The geometry (and so the KV type) of the blocks `layer` owns.
  const KvGeometry& LayerGeometry(int /*layer*/) const { return geometry_; }
  float* pool() { return pool_->f32(); }
  int64_t block_bytes() const { return geometry_.block_bytes(); }
  // Pool bytes per position of one owning layer: block_bytes() / block_tokens (exact: a
  // sequence of a multiple of block_tokens positions holds exactly this many bytes per
  // position and owning layer).
  double bytes_per_token_per_layer() const {
    return static_cast<double>(block_bytes()) / geometry_.block_tokens;
  }
  // Bytes of f16 tails held by sequences (int4 only; outside the pool).
  int64_t tail_bytes_in_use() const { return tail_bytes_in_use_; }
  int64_t total_blocks() const { return total_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_list_.size()); }
  int64_t used_blocks() const { return total_blocks_ - free_blocks(); }
  // Bytes of the blocks currently held by sequences.
  int64_t used_bytes() const { return used_blocks() * block_bytes(); }

  // Blocks a sequence of `tokens` positions needs under `strategy`.
  int64_t BlocksFor(const SharingStrategy& strategy, int64_t tokens) const;

  // Registers a new, empty sequence running `strategy` (kept alive by the cache).
  SeqId AddSequence(std::shared_ptr<const SharingStrategy> strategy);
  // Frees the sequence's blocks. Unknown ids are ignored.
  void RemoveSequence(SeqId seq);
  bool HasSequence(SeqId seq) const { return seqs_.contains(seq); }

  // Blocks Reserve(seq, tokens) would take from the pool.
  int64_t MissingBlocks(SeqId seq, int64_t tokens) const;
  // Ensures room for `tokens` positions in every owning layer; all-or-nothing. The first call
  // of an int4 sequence also allocates its tails (RESOURCE_EXHAUSTED when the backend cannot).
  absl::Status Reserve(SeqId seq, int64_t tokens);
  // Number of positions stored (advanced by the engine after a forward step).
  int64_t length(SeqId seq) const;
  void set_length(SeqId seq, int64_t length);
  const SharingStrategy& strategy(SeqId seq) const;
  // The block table attention reads for `layer`: the table of kv_source[layer] (empty for a
  // layer whose attention the strategy drops).
  const std::vector<int32_t>& TableForLayer(SeqId seq, int layer) const;
  // The f16 tail attention and WriteKv use for `layer` (kv_source[layer]'s); null unless the
  // layer's type is int4 and the sequence has reserved room.
  void* TailForLayer(SeqId seq, int layer) const;

 private:
  struct Sequence {
    std::shared_ptr<const SharingStrategy> strategy;
    // Indexed by layer; only owning layers have entries.
    std::vector<std::vector<int32_t>> tables;
    int64_t length = 0;
    std::unique_ptr<Buffer> tails;  // int4: one tail per owning layer
    std::vector<void*> tail_of;     // indexed by layer; only owning layers have one
  };
  explicit KvCache(Backend& backend) : backend_(backend) {}

  Backend& backend_;
  KvGeometry geometry_;
  int64_t tail_bytes_in_use_ = 0;
  int64_t total_blocks_ = 0;
  std::unique_ptr<Buffer> pool_;
  std::vector<int32_t> free_list_;  // LIFO
  absl::flat_hash_map<SeqId, Sequence> seqs_;
  SeqId next_id_ = 1;
};

}  // namespace kvshare
