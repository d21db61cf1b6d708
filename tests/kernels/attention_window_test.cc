// Sliding-window attention (AttentionSeq::window, Gemma 3's local layers) of the CPU backend:
// query j of a sequence must equal plain causal attention over only the window's positions —
// computed here independently as unwindowed naive attention over the contiguous K/V slice
// [p - window + 1, p], re-based to start at position 0 — for windows that cut inside and at
// block and chunk boundaries, in prefill and decode, split and unsplit, at every SIMD level.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/reference.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvshare {
namespace {

using cpu::Isa;

// One sequence of ctx positions in a pool with a shuffled block table; queries at
// [start_pos, ctx).
struct WindowFixture {
  KvGeometry g;
  int n_heads, start_pos, n_q, window;
  std::vector<float> pool, k, v, q;
  std::vector<int32_t> table;

  WindowFixture(KvGeometry geometry, int heads, int start, int queries, int w, uint32_t seed)
      : g(geometry), n_heads(heads), start_pos(start), n_q(queries), window(w) {
    const int ctx = start + queries, kv_dim = g.n_kv_heads * g.head_dim;
    const int blocks = (ctx + g.block_tokens - 1) / g.block_tokens;
    table.resize(blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(seed));
    pool.assign(size_t(blocks) * g.block_floats(), NAN);
    k = testing::RandomFloats(int64_t(ctx) * kv_dim, seed + 1, 2.0f);
    v = testing::RandomFloats(int64_t(ctx) * kv_dim, seed + 2);
    q = testing::RandomFloats(int64_t(queries) * heads * g.head_dim, seed + 3, 1.5f);
    cpu::ref::WriteKv(g, pool.data(), table.data(), 0, ctx, k.data(), v.data());
  }

  // Each query alone over its window's slice, without any window logic.
  std::vector<float> Want() const {
    const int kv_dim = g.n_kv_heads * g.head_dim, q_dim = n_heads * g.head_dim;
    std::vector<float> out(q.size());
    for (int j = 0; j < n_q; ++j) {
      const int p = start_pos + j, lo = std::max(0, p - window + 1);
      cpu::ref::AttentionContiguous(k.data() + size_t(lo) * kv_dim, v.data() + size_t(lo) * kv_dim,
                                    g.n_kv_heads, g.head_dim, q.data() + size_t(j) * q_dim, 1,
                                    p - lo, n_heads, out.data() + size_t(j) * q_dim);
    }
    return out;
  }

  std::vector<float> Run(Backend& b) const {
    AttentionSeq s;
    s.q_row = 0;
    s.n_q = n_q;
    s.start_pos = start_pos;
    s.block_table = table.data();
    s.n_blocks = static_cast<int>(table.size());
    s.window = window;
    std::vector<float> out(q.size(), NAN);
    b.Attention(g, pool.data(), &s, 1, q.data(), n_heads, out.data());
    return out;
  }
};

TEST(AttentionWindowTest, EachQuerySeesExactlyItsWindow) {
  const KvGeometry g{16, 1, 64};
  uint32_t seed = 1;
  // (start_pos, n_q, window): decode and prefill; windows cutting mid-block, on a block edge,
  // across the 256-position chunk edge, and windows longer than the context (no cut).
  const std::vector<std::vector<int>> cases = {
      {0, 40, 8},    {30, 1, 1},    {100, 1, 16},  {100, 1, 17},   {600, 1, 512},
      {511, 3, 512}, {700, 1, 300}, {300, 37, 5},  {250, 20, 256}, {520, 40, 512},
      {40, 1, 512},  {0, 9, 512},   {1000, 1, 257}};
  for (const auto& c : cases) {
    const WindowFixture f(g, 4, c[0], c[1], c[2], seed++);
    const std::vector<float> want = f.Want();
    for (Isa isa : testing::SupportedIsas()) {
      for (int threads : {1, 2}) {  // 2 threads and one long decode: the split path
        auto b = testing::CpuBackendAt(isa, threads);
        ASSERT_TRUE(b->SupportsAttentionWindow());
        const std::vector<float> got = f.Run(*b);
        for (size_t i = 0; i < got.size(); ++i) {
          ASSERT_LE(std::fabs(got[i] - want[i]), 1e-5 * std::fabs(want[i]) + 1e-5)
              << "start " << c[0] << " n_q " << c[1] << " window " << c[2] << " isa "
              << cpu::IsaName(isa) << " threads " << threads << " element " << i;
        }
      }
    }
  }
}

TEST(AttentionWindowTest, TheReferenceAppliesTheSameWindow) {
  const KvGeometry g{16, 1, 64};
  const WindowFixture f(g, 4, 520, 40, 512, 99);
  AttentionSeq s;
  s.n_q = f.n_q;
  s.start_pos = f.start_pos;
  s.block_table = f.table.data();
  s.n_blocks = static_cast<int>(f.table.size());
  s.window = f.window;
  std::vector<float> out(f.q.size());
  cpu::ref::Attention(g, f.pool.data(), &s, 1, f.q.data(), 4, out.data());
  const std::vector<float> want = f.Want();
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want[i], 1e-5) << i;
}

}  // namespace
}  // namespace kvshare
