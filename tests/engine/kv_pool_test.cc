// KvPool (common/engine/kv_pool.h): one byte arena whose pages serve one KV type each. With one
// type it is the uniform pool (a LIFO free list of blocks handing out low ids first, capacity
// exactly num_blocks); with several, pages are the least common multiple of the block sizes,
// the default type's capacity is still exactly num_blocks, a page returns to the arena when its
// last block is freed, and Fits() answers exactly what Allocate() can then deliver. Geometry:
// SmolLM2's (3 KV heads of 64 channels, 16-token blocks): blocks of 24576 (f32), 12288 (f16),
// 6336 (int8) and 4224 (int4) bytes, whose LCM is 2^13 * 9 * 11 = 811008 bytes.
#include "common/engine/kv_pool.h"

#include <algorithm>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"

namespace kvshare {
namespace {

constexpr KvType kF32 = KvType::kF32, kF16 = KvType::kF16, kI8 = KvType::kInt8, kI4 = KvType::kInt4;

KvGeometry SmolLm2(KvType t) {
  KvGeometry g;
  g.block_tokens = 16;
  g.n_kv_heads = 3;
  g.head_dim = 64;
  g.type = t;
  return g;
}

std::unique_ptr<KvPool> Make(Backend& b, KvType def, int64_t blocks, std::vector<KvType> also) {
  auto p = KvPool::Create(b, SmolLm2(def), blocks, also);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

KvBlockCounts Counts(int64_t f32, int64_t f16, int64_t i8, int64_t i4) {
  KvBlockCounts c;
  c[kF32] = f32;
  c[kF16] = f16;
  c[kI8] = i8;
  c[kI4] = i4;
  return c;
}

TEST(KvPoolTest, OneTypeIsTheUniformFreeList) {
  auto backend = MakeCpuBackend(1);
  auto pool = Make(*backend, kF16, 10, {});
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->page_bytes(), 12288);
  EXPECT_EQ(pool->capacity(kF16), 10);
  EXPECT_FALSE(pool->Holds(kF32));
  std::vector<int32_t> got;
  for (int i = 0; i < 10; ++i) got.push_back(pool->Allocate(kF16));
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
  EXPECT_FALSE(pool->Fits(Counts(0, 1, 0, 0)));
  pool->Free(kF16, 7);
  pool->Free(kF16, 2);
  EXPECT_EQ(pool->Allocate(kF16), 2);  // last freed, first reused
  EXPECT_EQ(pool->Allocate(kF16), 7);
  EXPECT_EQ(pool->used_bytes(), 10 * 12288);
}

TEST(KvPoolTest, MixedPagesAreTheLcmAndTheDefaultTypeKeepsItsExactCapacity) {
  auto backend = MakeCpuBackend(1);
  // 100 f32 blocks = 2457600 bytes = 3 pages of 811008 (33 f32 blocks each) + a short page of
  // 24576 * 1 (the 100th f32 block).
  auto pool = Make(*backend, kF32, 100, {kF16, kI8, kI4});
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->page_bytes(), 811008);
  EXPECT_EQ(pool->capacity(kF32), 100);
  EXPECT_EQ(pool->capacity(kF16), 3 * 66);  // the short page is the default type's only
  EXPECT_EQ(pool->capacity(kI8), 3 * 128);
  EXPECT_EQ(pool->capacity(kI4), 3 * 192);
  EXPECT_EQ(pool->slack_bytes(kI8), 0);
  EXPECT_TRUE(pool->FitsEmpty(Counts(100, 0, 0, 0)));
  EXPECT_FALSE(pool->FitsEmpty(Counts(101, 0, 0, 0)));
  // One page of int4 leaves 2 full pages and the short page to f32: 67 blocks.
  EXPECT_TRUE(pool->FitsEmpty(Counts(67, 0, 0, 192)));
  EXPECT_FALSE(pool->FitsEmpty(Counts(68, 0, 0, 192)));
  EXPECT_FALSE(pool->FitsEmpty(Counts(67, 0, 0, 193)));
}

// With k4v3's 3648-byte blocks (2^6 * 3 * 19) the LCM is 15409152 bytes, over the 4 MiB cap:
// pages are then multiples of the default type's block within 1/16 of the arena, but hold at
// least 16 of the largest block (f32's), so a small arena still serves a plan of four types.
TEST(KvPoolTest, PagesOverTheCapStaySmallBesideASmallArena) {
  auto backend = MakeCpuBackend(1);
  const KvType k4v3 = KvType::kK4V3;
  auto pool = Make(*backend, kF16, 480, {kF32, kI8, kI4, k4v3});  // 5898240 bytes
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(pool->page_bytes(), 16 * 24576);  // 32 f16 blocks; 1/16 of the arena is less
  EXPECT_EQ(pool->capacity(kF16), 480);
  // 393216 / 3648 = 107.8: a page holds 106 or 107 whole k4v3 blocks (block ids are absolute,
  // so a page boundary may cut one at each end); capacity counts the smaller.
  EXPECT_EQ(pool->capacity(k4v3), 15 * 106);
  EXPECT_EQ(pool->slack_bytes(k4v3), 393216 - 106 * 3648);
  KvBlockCounts plan = Counts(0, 3, 6, 60);
  plan[k4v3] = 18;
  EXPECT_TRUE(pool->FitsEmpty(plan));
  // The first k4v3 block takes a page; its blocks are that page's.
  const int32_t a = pool->Allocate(k4v3);
  EXPECT_EQ(pool->free_pages(), 14);
  EXPECT_EQ(int64_t{pool->Allocate(k4v3)} * 3648 / 393216, int64_t{a} * 3648 / 393216);
}

TEST(KvPoolTest, APageServesOneTypeAndReturnsWhenItsLastBlockIsFreed) {
  auto backend = MakeCpuBackend(1);
  auto pool = Make(*backend, kF16, 66 * 2, {kF32, kI8, kI4});  // 2 pages of 811008 bytes
  ASSERT_NE(pool, nullptr);
  const int32_t a = pool->Allocate(kI4);
  EXPECT_EQ(pool->free_pages(), 1);
  // Blocks of one page are addressed from the arena: int4 block b at b * 4224 bytes.
  const int64_t page_of_a = int64_t{a} * 4224 / 811008;
  for (int i = 1; i < 192; ++i) {
    const int32_t b = pool->Allocate(kI4);
    EXPECT_EQ(int64_t{b} * 4224 / 811008, page_of_a) << "the page fills before another is taken";
  }
  EXPECT_EQ(pool->free_pages(), 1);
  EXPECT_EQ(pool->free_blocks(kF16), 66);
  EXPECT_FALSE(pool->Fits(Counts(0, 67, 0, 0)));
  const int32_t extra = pool->Allocate(kI4);  // the 193rd takes the last page
  EXPECT_EQ(pool->free_pages(), 0);
  EXPECT_EQ(pool->free_blocks(kF16), 0);
  pool->Free(kI4, extra);  // its page is empty again: back to any type
  EXPECT_EQ(pool->free_pages(), 1);
  EXPECT_TRUE(pool->Fits(Counts(0, 66, 0, 0)));
  EXPECT_EQ(pool->used_bytes(), 192 * 4224);
}

// A random mix of allocations and frees of every type, against an independent model of the
// arena (bytes owned by each page's type). Whenever Fits() says yes, the allocations succeed
// and never overlap; whenever it says no, the request really exceeds what free pages and
// holes can give (counted independently here).
TEST(KvPoolTest, FitsIsExactUnderRandomMixedTraffic) {
  auto backend = MakeCpuBackend(1);
  const int64_t f32_blocks = 33 * 6 + 5;  // 6 full pages and a short one
  auto pool = Make(*backend, kF32, f32_blocks, {kF16, kI8, kI4});
  ASSERT_NE(pool, nullptr);
  const int64_t P = 811008, arena = f32_blocks * 24576;
  const int64_t bb[4] = {24576, 12288, 6336, 4224};
  std::vector<std::pair<KvType, int32_t>> live;
  std::mt19937 rng(17);
  int yes = 0, no = 0;
  for (int step = 0; step < 3000; ++step) {
    if (!live.empty() && rng() % 3 == 0) {
      const size_t i = rng() % live.size();
      pool->Free(live[i].first, live[i].second);
      live[i] = live.back();
      live.pop_back();
      continue;
    }
    const KvType t = static_cast<KvType>(rng() % 4);
    KvBlockCounts more;
    more[t] = 1 + rng() % 40;
    // Independent count: pages with any live block belong to their type; a free page is one
    // with none. Holes: free slots of t inside t's pages.
    std::vector<int> owner((arena + P - 1) / P, -1);
    std::vector<int64_t> used(owner.size(), 0);
    for (auto [lt, b] : live) {
      const int64_t p = int64_t{b} * bb[int(lt)] / P;
      owner[p] = int(lt);
      ++used[p];
    }
    const int64_t full = arena / P;
    int64_t free_full = 0, holes = 0;
    bool short_free = false;
    for (size_t p = 0; p < owner.size(); ++p) {
      const int64_t end = std::min<int64_t>(arena, (p + 1) * P);
      const int64_t in_page = end / bb[int(t)] - (int64_t(p) * P + bb[int(t)] - 1) / bb[int(t)];
      if (owner[p] < 0) {
        if (int64_t(p) < full)
          ++free_full;
        else
          short_free = true;
      } else if (owner[p] == int(t)) {
        holes += in_page - used[p];
      }
    }
    const int64_t per_page = P / bb[int(t)];
    const int64_t short_cap = t == kF32 && short_free ? 5 : 0;
    const bool can = more[t] <= holes + short_cap + free_full * per_page;
    ASSERT_EQ(pool->Fits(more), can) << "step " << step << " type " << KvTypeName(t);
    if (!can) {
      ++no;
      continue;
    }
    ++yes;
    for (int64_t i = 0; i < more[t]; ++i) live.push_back({t, pool->Allocate(t)});
  }
  EXPECT_GT(yes, 100);
  EXPECT_GT(no, 100);
  // No two live blocks overlap in the arena.
  std::vector<std::pair<int64_t, int64_t>> spans;
  for (auto [lt, b] : live)
    spans.push_back({int64_t{b} * bb[int(lt)], (int64_t{b} + 1) * bb[int(lt)]});
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i) ASSERT_LE(spans[i - 1].second, spans[i].first);
  for (auto& s : spans) ASSERT_LE(s.second, arena);
}

TEST(KvPoolTest, ATypeTheBackendOrGeometryCannotHoldIsRefused) {
  auto backend = MakeCpuBackend(1);
  KvGeometry g = SmolLm2(kF16);
  g.head_dim = 8;  // int4 needs whole 32-channel groups
  auto pool = KvPool::Create(*backend, g, 10, {kI4});
  ASSERT_FALSE(pool.ok());
  EXPECT_EQ(pool.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvshare
