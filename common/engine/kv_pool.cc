#include "common/engine/kv_pool.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvshare {

KvBlockCounts& KvBlockCounts::operator+=(const KvBlockCounts& o) {
  for (int t = 0; t < kKvTypeCount; ++t) of[t] += o.of[t];
  return *this;
}

int64_t KvBlockCounts::total() const {
  int64_t n = 0;
  for (int64_t x : of) n += x;
  return n;
}

std::string KvBlockCounts::ToString() const {
  std::vector<std::string> parts;
  for (KvType t : kAllKvTypes) {
    if ((*this)[t] != 0) parts.push_back(absl::StrCat((*this)[t], " ", KvTypeName(t)));
  }
  return parts.empty() ? "0" : absl::StrJoin(parts, " + ");
}

KvBlockCounts& KvBlockCounts::operator-=(const KvBlockCounts& o) {
  for (int t = 0; t < kKvTypeCount; ++t) of[t] -= o.of[t];
  return *this;
}

absl::StatusOr<std::unique_ptr<KvPool>> KvPool::Create(Backend& backend, KvGeometry g,
                                                       int64_t num_blocks,
                                                       const std::vector<KvType>& also) {
  if (num_blocks <= 0 || num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KV pool: %d blocks requested, must be in [1, %d]", num_blocks, INT32_MAX));
  }
  std::unique_ptr<KvPool> pool(new KvPool());
  pool->default_ = g.type;
  std::vector<KvType> types = {g.type};
  for (KvType t : also) {
    if (std::find(types.begin(), types.end(), t) == types.end()) types.push_back(t);
  }
  int64_t lcm = 1;
  for (KvType t : types) {
    KvGeometry tg = g;
    tg.type = t;
    absl::Status valid = ValidateKvGeometry(tg);
    if (valid.ok()) valid = backend.SupportsKvType(t);
    if (!valid.ok()) return valid;
    TypeState& s = pool->types_[int(t)];
    s.held = true;
    s.g = tg;
    s.block_bytes = tg.block_bytes();
    lcm = std::lcm(lcm, s.block_bytes);
    if (lcm > kMaxKvPageBytes) lcm = kMaxKvPageBytes + 1;  // over the cap: stop growing
  }
  const int64_t bb0 = g.block_bytes();
  pool->arena_bytes_ = num_blocks * bb0;
  if (types.size() == 1) {
    pool->page_bytes_ = bb0;  // the uniform pool: one block per page
  } else if (lcm <= kMaxKvPageBytes) {
    pool->page_bytes_ = lcm;
  } else {
    // A small arena still gets pages to share out: at most 1/16 of it, but room for 16 blocks
    // of the largest type (slack under 1/16 of a page).
    int64_t largest = 0;
    for (KvType t : types) largest = std::max(largest, pool->types_[int(t)].block_bytes);
    const int64_t target =
        std::min(kMaxKvPageBytes, std::max(pool->arena_bytes_ / 16, 16 * largest));
    pool->page_bytes_ = std::max<int64_t>(1, target / bb0) * bb0;
  }
  const int64_t P = pool->page_bytes_;
  pool->full_pages_ = pool->arena_bytes_ / P;
  pool->has_short_ = pool->arena_bytes_ % P != 0;
  pool->short_blocks_ = (pool->arena_bytes_ % P) / bb0;  // P is a multiple of bb0
  // Every block id of every type fits an int32 (block tables are int32).
  for (KvType t : types) {
    TypeState& s = pool->types_[int(t)];
    if (pool->arena_bytes_ / s.block_bytes > INT32_MAX) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "KV pool: %d bytes hold %d %s blocks, more than the %d a block table "
          "addresses",
          pool->arena_bytes_, pool->arena_bytes_ / s.block_bytes, KvTypeName(t), INT32_MAX));
    }
    // The fewest blocks of t in a full page: pages repeat with period lcm(P, bb) / P.
    const int64_t period =
        std::min<int64_t>(pool->full_pages_, s.block_bytes / std::gcd(P, s.block_bytes));
    s.page_blocks = P / s.block_bytes;
    for (int64_t p = 0; p < period; ++p) {
      int64_t first = 0, end = 0;
      pool->PageBlocks(p, s, &first, &end);
      s.page_blocks = std::min(s.page_blocks, end - first);
    }
    if (s.page_blocks < 1 && t != g.type) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "KV pool: a %d-byte page holds no %s block (%d bytes)", P, KvTypeName(t), s.block_bytes));
    }
  }
  auto arena = backend.Allocate(static_cast<size_t>(pool->arena_bytes_));
  if (!arena.ok()) return arena.status();
  pool->arena_ = std::move(*arena);
  pool->pages_.resize(pool->full_pages_ + (pool->has_short_ ? 1 : 0));
  pool->free_full_.reserve(pool->full_pages_);
  for (int64_t p = pool->full_pages_ - 1; p >= 0; --p) {
    pool->free_full_.push_back(static_cast<int32_t>(p));
  }
  pool->short_free_ = pool->has_short_;
  return pool;
}

void KvPool::PageBlocks(int64_t p, const TypeState& t, int64_t* first, int64_t* end) const {
  const int64_t begin_byte = p * page_bytes_;
  const int64_t end_byte = std::min(arena_bytes_, begin_byte + page_bytes_);
  *first = (begin_byte + t.block_bytes - 1) / t.block_bytes;
  *end = std::max(*first, end_byte / t.block_bytes);
}

int64_t KvPool::capacity(KvType t) const {
  const TypeState& s = types_[int(t)];
  if (!s.held) return 0;
  return s.page_blocks * full_pages_ + (t == default_ ? short_blocks_ : 0);
}

int64_t KvPool::slack_bytes(KvType t) const {
  const TypeState& s = types_[int(t)];
  return s.held ? page_bytes_ - s.page_blocks * s.block_bytes : 0;
}

int64_t KvPool::free_blocks(KvType t) const {
  const TypeState& s = types_[int(t)];
  if (!s.held) return 0;
  return s.holes + s.page_blocks * static_cast<int64_t>(free_full_.size()) +
         (t == default_ && short_free_ ? short_blocks_ : 0);
}

int64_t KvPool::used_blocks() const {
  int64_t n = 0;
  for (const TypeState& s : types_) n += s.used;
  return n;
}

int64_t KvPool::used_bytes() const {
  int64_t n = 0;
  for (const TypeState& s : types_) n += s.used * s.block_bytes;
  return n;
}

bool KvPool::FitsWith(const KvBlockCounts& more, bool empty) const {
  // Other types first take whole free pages (never the short one); the default type takes
  // the short page and what full pages are left.
  const int64_t free_full = empty ? full_pages_ : static_cast<int64_t>(free_full_.size());
  int64_t pages = 0;
  for (int t = 0; t < kKvTypeCount; ++t) {
    if (more.of[t] <= 0) continue;
    const TypeState& s = types_[t];
    if (!s.held) return false;
    if (static_cast<KvType>(t) == default_) continue;
    const int64_t beyond = std::max<int64_t>(0, more.of[t] - (empty ? 0 : s.holes));
    pages += (beyond + s.page_blocks - 1) / s.page_blocks;
  }
  if (pages > free_full) return false;
  const TypeState& d = types_[int(default_)];
  const int64_t beyond = std::max<int64_t>(0, more[default_] - (empty ? 0 : d.holes));
  const bool short_free = empty ? has_short_ : short_free_;
  return beyond <= (short_free ? short_blocks_ : 0) + (free_full - pages) * d.page_blocks;
}

bool KvPool::Fits(const KvBlockCounts& more) const { return FitsWith(more, /*empty=*/false); }
bool KvPool::FitsEmpty(const KvBlockCounts& blocks) const {
  return FitsWith(blocks, /*empty=*/true);
}

void KvPool::TakePage(int32_t p, KvType t) {
  TypeState& s = types_[int(t)];
  Page& page = pages_[p];
  int64_t first = 0, end = 0;
  PageBlocks(p, s, &first, &end);
  page.type = static_cast<int8_t>(t);
  page.used = 0;
  page.free.clear();
  for (int64_t b = end - 1; b >= first; --b) page.free.push_back(static_cast<int32_t>(b));
  s.holes += end - first;
  s.partial.insert(p);
}

int32_t KvPool::Allocate(KvType t) {
  TypeState& s = types_[int(t)];
  if (s.partial.empty()) {
    // The default type prefers the short page, which no other type can use.
    if (t == default_ && short_free_ && short_blocks_ > 0) {
      short_free_ = false;
      TakePage(static_cast<int32_t>(full_pages_), t);
    } else {
      const int32_t p = free_full_.back();
      free_full_.pop_back();
      TakePage(p, t);
    }
  }
  const int32_t p = *s.partial.begin();
  Page& page = pages_[p];
  const int32_t b = page.free.back();
  page.free.pop_back();
  ++page.used;
  ++s.used;
  --s.holes;
  if (page.free.empty()) s.partial.erase(p);
  return b;
}

void KvPool::Free(KvType t, int32_t block) {
  TypeState& s = types_[int(t)];
  const int32_t p = static_cast<int32_t>(int64_t{block} * s.block_bytes / page_bytes_);
  Page& page = pages_[p];
  page.free.push_back(block);
  --page.used;
  --s.used;
  ++s.holes;
  if (page.used > 0) {
    s.partial.insert(p);
    return;
  }
  // The page's last block: the page goes back to the arena for any type.
  s.holes -= static_cast<int64_t>(page.free.size());
  page.free.clear();
  page.type = -1;
  s.partial.erase(p);
  if (p == full_pages_) {
    short_free_ = true;
  } else {
    free_full_.push_back(p);
  }
}

}  // namespace kvshare
