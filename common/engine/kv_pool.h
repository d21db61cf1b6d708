// The byte arena behind the paged KV cache, holding blocks of several KV types at once
// (issue 17: a batch mixes sequences whose plans store a layer in different types).
//
// Design. One arena of `num_blocks * block_bytes(default type)` bytes — the byte budget, the
// same as a pool of the default type alone — cut into pages of `page_bytes()`. A page belongs
// to no type (free) or to one type; a type takes a free page when none of its pages has a free
// block, and the page returns to the free pages when its last block is freed. Block ids are
// per type and absolute: block b of type t is the bytes [b * bb_t, (b + 1) * bb_t) of the
// arena (bb_t = that type's block bytes), so the kernels keep their contract (pool pointer +
// block id * block_bytes of the geometry they are given) and never learn about pages; page p
// holds the blocks of t lying wholly inside [p * page_bytes, (p + 1) * page_bytes).
//
// Page size: with one type, one block (the pool is exactly the uniform pool it always was);
// with several, the least common multiple of their block bytes when it is at most
// kMaxKvPageBytes (no slack: every page holds a whole number of blocks of every type), else
// the largest multiple of the default type's block bytes within min(that cap, max(1/16 of the
// arena, 16 blocks of the largest type)) — so a small arena still has pages for several types
// (the default type still fits exactly; another type loses under two of its blocks per page,
// one cut at each end: slack_bytes()). The
// arena's last page may be short (the budget need not be whole pages): only the default type
// uses it, so the default type's capacity is exactly num_blocks, as before.
//
// Admission is exact: Fits(more) says whether `more` blocks of each type can be allocated now
// (free blocks inside a type's pages first, then free pages), and Allocate never fails after
// it. Exact when pages have no slack; with slack it counts each page at its smallest block
// count (sufficient, not tight).
//
// Not thread-safe (the engine thread owns it), except the const methods on immutable
// geometry documented as such.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/kv_type.h"

namespace kvshare {

// Largest page of a mixed pool (a page is the unit a type takes from the arena).
constexpr int64_t kMaxKvPageBytes = int64_t{4} << 20;

// A number of blocks per KV type (indexed by static_cast<int>(KvType)).
struct KvBlockCounts {
  std::array<int64_t, kKvTypeCount> of{};
  int64_t& operator[](KvType t) { return of[static_cast<int>(t)]; }
  int64_t operator[](KvType t) const { return of[static_cast<int>(t)]; }
  int64_t total() const;
  // "40 int4 + 25 int8": the types with blocks, in kAllKvTypes order ("0" when none).
  std::string ToString() const;
  KvBlockCounts& operator+=(const KvBlockCounts& o);
  KvBlockCounts& operator-=(const KvBlockCounts& o);
};

class KvPool {
 public:
  // An arena for `num_blocks` blocks of geometry `g` (its type is the default type) that also
  // holds blocks of each type in `also` (duplicates and g.type ignored). Every type must be
  // valid for the geometry and supported by the backend (InvalidArgument / Unimplemented).
  static absl::StatusOr<std::unique_ptr<KvPool>> Create(Backend& backend, KvGeometry g,
                                                        int64_t num_blocks,
                                                        const std::vector<KvType>& also = {});

  KvType default_type() const { return default_; }
  bool Holds(KvType t) const { return types_[int(t)].held; }
  // The geometry of type t's blocks (t must be held).
  const KvGeometry& geometry(KvType t) const { return types_[int(t)].g; }
  void* arena() { return arena_->data(); }
  int64_t arena_bytes() const { return arena_bytes_; }
  int64_t page_bytes() const { return page_bytes_; }
  int64_t pages() const { return static_cast<int64_t>(pages_.size()); }
  // Blocks of t an empty pool holds (the default type's: num_blocks). Immutable.
  int64_t capacity(KvType t) const;
  // Bytes per full page that type t cannot use (0 without slack). Immutable.
  int64_t slack_bytes(KvType t) const;
  // Blocks of t that could be allocated now, with no other type allocating.
  int64_t free_blocks(KvType t) const;
  int64_t used_blocks(KvType t) const { return types_[int(t)].used; }
  int64_t used_blocks() const;  // all types
  int64_t used_bytes() const;   // all types: sum of used blocks x their block bytes
  int64_t free_pages() const { return static_cast<int64_t>(free_full_.size()) + short_free_; }

  // Whether `more` blocks of each type can all be allocated now (a type not held: false).
  bool Fits(const KvBlockCounts& more) const;
  // Whether an empty pool holds `blocks`. Immutable: safe from any thread.
  bool FitsEmpty(const KvBlockCounts& blocks) const;
  // A block of type t; precondition: Fits() of at least one block of t.
  int32_t Allocate(KvType t);
  void Free(KvType t, int32_t block);

 private:
  struct TypeState {
    bool held = false;
    KvGeometry g;
    int64_t block_bytes = 0;
    int64_t page_blocks = 0;    // fewest blocks of this type in a full page
    int64_t used = 0;           // blocks in use
    int64_t holes = 0;          // free blocks inside this type's pages
    std::set<int32_t> partial;  // this type's pages with a free block (lowest first)
  };
  struct Page {
    int8_t type = -1;  // -1: free
    int32_t used = 0;
    std::vector<int32_t> free;  // free blocks, the next one last
  };
  KvPool() = default;
  // Blocks of t wholly inside page p: [first, end).
  void PageBlocks(int64_t p, const TypeState& t, int64_t* first, int64_t* end) const;
  bool FitsWith(const KvBlockCounts& more, bool empty) const;
  void TakePage(int32_t p, KvType t);

  KvType default_ = KvType::kF32;
  std::array<TypeState, kKvTypeCount> types_;
  std::unique_ptr<Buffer> arena_;
  int64_t arena_bytes_ = 0;
  int64_t page_bytes_ = 0;
  int64_t full_pages_ = 0;
  bool has_short_ = false;    // the last page is short (default type only)
  int64_t short_blocks_ = 0;  // default-type blocks in the short page
  std::vector<Page> pages_;
  std::vector<int32_t> free_full_;  // free full pages, LIFO handing out low ids first
  bool short_free_ = false;
};

}  // namespace kvshare
