// The paged, layer-aliased KV cache (docs/ARCHITECTURE.md).
//
// Blocks, not tied to a layer: a block holds K and V of `block_tokens` positions of one layer
// of one sequence, stored in its owning layer's KvType (layouts: kernels/kv_type.h). The type
// of an owning layer is its strategy's plan entry, or the pool's default type (`--kv-type`)
// for a strategy without a plan (SharingStrategy::kv_type); a sharing layer reads its
// source's blocks as they are. Blocks come from a KvPool (kv_pool.h): one byte arena whose
// pages each serve one type, so sequences whose plans store a layer in different types share
// one pool, one step and one byte budget. A pool of one type is exactly the uniform pool.
// An int4 owning layer also gives its sequence an f16 *tail* (block 0 for good, and the partial
// block, quantised into the pool when it fills: kernels/kv_type.h), allocated with the
// sequence's first blocks and not counted in the pool's bytes (its block 0 in the pool stays
// allocated and unused): used_bytes() is exactly what the pool's blocks hold, and a sequence of a
// multiple of block_tokens positions holds SharingStrategy::KvBytesPerToken bytes per
// position. Each sequence has a block table per *owning* layer of its strategy; a sharing
// layer resolves to its source's table ("the layer-to-cache mapping lives in the cache; no
// kernel knows about sharing"). Growing a sequence allocates blocks for every owning layer or
// none (all-or-nothing); when the pool is short the status is RESOURCE_EXHAUSTED and nothing
// already stored is touched.
//
// Not thread-safe: owned and driven by one engine thread (BlocksByType and FitsEmpty are pure
// arithmetic on immutable geometry and may be called from any thread).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/engine/kv_pool.h"
#include "common/engine/query_weights.h"
#include "common/strategy/sharing_strategy.h"
#include "kernels/backend.h"

namespace kvshare {

using SeqId = int64_t;

class KvCache {
 public:
  // A pool of `num_blocks` blocks of geometry `g` allocated from `backend`: g.type only.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(Backend& backend, KvGeometry g,
                                                         int64_t num_blocks);
  // The same byte budget (num_blocks blocks of g.type, the default type) that also holds
  // blocks of the types in `also`, for strategies whose plans name them (kv_pool.h).
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(Backend& backend, KvGeometry g,
                                                         int64_t num_blocks,
                                                         const std::vector<KvType>& also);

  // The default type's geometry (what a strategy without a plan stores every layer in).
  const KvGeometry& geometry() const { return geometry_; }
  // The geometry of the default type for `layer` (kept for callers without a sequence at
  // hand; an int4a default carries the layer's query weights once set).
  const KvGeometry& LayerGeometry(int layer) const {
    return geometry_.type == KvType::kInt4A ? GeometryOfType(KvType::kInt4A, layer) : geometry_;
  }
  // int4a's query weights (common/engine/query_weights.h), set once by the engine before a
  // sequence stores a layer as int4a; until then int4a layers weigh every channel 1.
  void SetQueryWeights(std::shared_ptr<const QueryWeights> weights);
  bool has_query_weights() const { return query_weights_ != nullptr; }
  // The geometry `layer` of `seq` reads and writes: its source's type under seq's strategy.
  const KvGeometry& GeometryFor(SeqId seq, int layer) const;
  const KvPool& kv_pool() const { return *pool_; }
  // OK when the pool holds every type `strategy`'s plan names; FailedPrecondition naming the
  // first layer whose type it does not hold, and the types it holds.
  absl::Status CheckHolds(const SharingStrategy& strategy) const;
  // The arena every block table indexes (block b of type t at b * t's block_bytes).
  float* pool() { return static_cast<float*>(pool_->arena()); }
  int64_t block_bytes() const { return geometry_.block_bytes(); }
  // Pool bytes per position of one owning layer of the default type: block_bytes() /
  // block_tokens (exact: a sequence of a multiple of block_tokens positions holds exactly
  // this many bytes per position and owning layer). A plan's: SharingStrategy::KvBytesPerToken.
  double bytes_per_token_per_layer() const {
    return static_cast<double>(block_bytes()) / geometry_.block_tokens;
  }
  // Bytes of f16 tails held by sequences (int4 only; outside the pool).
  int64_t tail_bytes_in_use() const { return tail_bytes_in_use_; }
  // Blocks of the default type: the pool's capacity, and what could be allocated now.
  int64_t total_blocks() const { return pool_->capacity(geometry_.type); }
  int64_t free_blocks() const { return pool_->free_blocks(geometry_.type); }
  // Blocks held by sequences, all types together.
  int64_t used_blocks() const { return pool_->used_blocks(); }
  // Bytes of the blocks currently held by sequences (each block at its type's block bytes).
  int64_t used_bytes() const { return pool_->used_bytes(); }

  // Blocks a sequence of `tokens` positions needs under `strategy` (all types together).
  int64_t BlocksFor(const SharingStrategy& strategy, int64_t tokens) const;
  // The same per KV type. Immutable arithmetic: safe from any thread.
  KvBlockCounts BlocksByType(const SharingStrategy& strategy, int64_t tokens) const;
  // Whether `more` blocks of each type can be allocated now (KvPool::Fits).
  bool Fits(const KvBlockCounts& more) const { return pool_->Fits(more); }
  // Whether an empty pool holds `blocks`. Immutable: safe from any thread.
  bool FitsEmpty(const KvBlockCounts& blocks) const { return pool_->FitsEmpty(blocks); }
  // Blocks of each type held by sequences now.
  KvBlockCounts UsedByType() const;

  // Registers a new, empty sequence running `strategy` (kept alive by the cache).
  SeqId AddSequence(std::shared_ptr<const SharingStrategy> strategy);
  // Frees the sequence's blocks. Unknown ids are ignored.
  void RemoveSequence(SeqId seq);
  bool HasSequence(SeqId seq) const { return seqs_.contains(seq); }

  // Blocks Reserve(seq, tokens) would take from the pool (all types together, and per type).
  int64_t MissingBlocks(SeqId seq, int64_t tokens) const;
  KvBlockCounts MissingByType(SeqId seq, int64_t tokens) const;
  // Ensures room for `tokens` positions in every owning layer; all-or-nothing. The first call
  // of a sequence with int4 layers also allocates their tails (RESOURCE_EXHAUSTED when the
  // backend cannot).
  absl::Status Reserve(SeqId seq, int64_t tokens);
  // Makes `to` (a sequence with no positions yet) hold the first `positions` positions of
  // `from`, copied: what a forward of `to`'s strategy over those tokens would have stored, when
  // both sequences compute them alike — positions within block 0, every layer reading the same
  // source (and the same output projections, if any), and every owning layer keeping block 0
  // in f16 under both (f16, or a type with a tail, whose slot 0 is block 0 in f16's layout), in
  // types the backend's attention reads alike (Backend::ReadsF16BlockZeroAlike). Then `to`
  // continues from there: a prefix computed once serves plans that differ only in how later
  // blocks are stored. InvalidArgument
  // naming the first condition that fails (nothing copied); RESOURCE_EXHAUSTED as Reserve.
  absl::Status CopyPrefix(SeqId from, SeqId to, int64_t positions);
  // Whether CopyPrefix between sequences of these strategies can hold `positions` positions
  // (the conditions above on the strategies; OK or InvalidArgument naming the first that
  // fails), under this cache's default type.
  absl::Status PrefixShareable(const SharingStrategy& a, const SharingStrategy& b,
                               int64_t positions) const;

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
    std::vector<KvType> type_of;  // indexed by layer: its source's type
    int64_t length = 0;
    std::unique_ptr<Buffer> tails;  // one tail per int4 owning layer
    std::vector<void*> tail_of;     // indexed by layer; only owning layers have one
  };
  explicit KvCache(Backend& backend) : backend_(backend) {}
  // The pool's geometry of `t`, with `layer`'s query weights when t is int4a and they are set.
  const KvGeometry& GeometryOfType(KvType t, int layer) const;
  // Where owning `layer` of `s` keeps block 0 in f16 (its tail's slot 0, or its f16 block 0).
  uint8_t* F16BlockZero(const Sequence& s, int layer);

  Backend& backend_;
  KvGeometry geometry_;
  int64_t tail_bytes_in_use_ = 0;
  std::unique_ptr<KvPool> pool_;
  std::shared_ptr<const QueryWeights> query_weights_;
  std::vector<KvGeometry> int4a_layers_;  // per layer, once the query weights are set
  absl::flat_hash_map<SeqId, Sequence> seqs_;
  SeqId next_id_ = 1;
};

}  // namespace kvshare
