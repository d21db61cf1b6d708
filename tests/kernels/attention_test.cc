// Paged attention of the CPU backend against naive attention over contiguous K/V: GQA ratios,
// head sizes, block sizes, lengths around block and chunk boundaries, several sequences with
// shuffled block tables in one call, prefill and decode; and the same bits at any thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/reference.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvshare {
namespace {

using cpu::Isa;

struct Seq {
  int start_pos;  // tokens already in the cache
  int n_q;        // queries in this call
};

// A pool with every sequence's K/V written through its own shuffled block table, plus the
// contiguous copies the naive reference reads.
struct Fixture {
  KvGeometry g;
  int n_heads;
  std::vector<float> pool;
  std::vector<std::vector<int32_t>> tables;
  std::vector<std::vector<float>> k, v;  // contiguous [ctx][kv_dim]
  std::vector<AttentionSeq> seqs;
  std::vector<float> q;
  int total_q = 0;

  Fixture(KvGeometry geometry, int heads, const std::vector<Seq>& specs, uint32_t seed)
      : g(geometry), n_heads(heads) {
    const int kv_dim = g.n_kv_heads * g.head_dim;
    int total_blocks = 0;
    for (const Seq& s : specs)
      total_blocks += (s.start_pos + s.n_q + g.block_tokens - 1) / g.block_tokens;
    std::vector<int32_t> ids(total_blocks + 3);  // a few blocks nobody uses
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(ids.begin(), ids.end(), rng);
    pool.assign(ids.size() * g.block_floats(), NAN);  // unused slots are poison
    int next_id = 0;
    for (const Seq& s : specs) {
      const int ctx = s.start_pos + s.n_q;
      const int blocks = (ctx + g.block_tokens - 1) / g.block_tokens;
      tables.emplace_back(ids.begin() + next_id, ids.begin() + next_id + blocks);
      next_id += blocks;
      k.push_back(testing::RandomFloats(static_cast<int64_t>(ctx) * kv_dim, seed++, 2.0f));
      v.push_back(testing::RandomFloats(static_cast<int64_t>(ctx) * kv_dim, seed++));
      cpu::ref::WriteKv(g, pool.data(), tables.back().data(), 0, ctx, k.back().data(),
                        v.back().data());
    }
    for (size_t i = 0; i < specs.size(); ++i) {
      seqs.push_back({total_q, specs[i].n_q, specs[i].start_pos, tables[i].data(),
                      static_cast<int>(tables[i].size())});
      total_q += specs[i].n_q;
    }
    q = testing::RandomFloats(static_cast<int64_t>(total_q) * n_heads * g.head_dim, seed, 1.5f);
  }

  std::vector<float> Naive() const {
    std::vector<float> out(q.size());
    const int64_t q_dim = static_cast<int64_t>(n_heads) * g.head_dim;
    for (size_t i = 0; i < seqs.size(); ++i) {
      cpu::ref::AttentionContiguous(k[i].data(), v[i].data(), g.n_kv_heads, g.head_dim,
                                    q.data() + seqs[i].q_row * q_dim, seqs[i].n_q,
                                    seqs[i].start_pos, n_heads, out.data() + seqs[i].q_row * q_dim);
    }
    return out;
  }

  std::vector<float> Run(Backend& b) const {
    std::vector<float> out(q.size(), NAN);
    b.Attention(g, pool.data(), seqs.data(), static_cast<int>(seqs.size()), q.data(), n_heads,
                out.data());
    return out;
  }
};

// Outputs are convex combinations of V rows: compare with a tolerance relative to max |V|.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, float v_scale,
                 const std::string& what) {
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::fabs(got[i] - want[i]), 1e-5 * std::fabs(want[i]) + 2e-6 * v_scale)
        << what << " element " << i << " got " << got[i] << " want " << want[i];
  }
}

TEST(AttentionTest, MatchesNaiveAttentionOverTheGrid) {
  uint32_t seed = 1;
  for (int group : {1, 2, 3, 4}) {
    // 256: Gemma 3's heads, past the widest AVX-512 register-resident path.
    for (int head_dim : {8, 64, 256}) {
      for (int block : {16, 4}) {
        const KvGeometry g{block, 2, head_dim};
        const int n_heads = 2 * group;
        // Decode (n_q = 1) at lengths around block and chunk boundaries, and prefill chunks
        // (n_q > 1, with and without earlier tokens), several sequences per call.
        const std::vector<std::vector<Seq>> calls = {
            {{block - 2, 1}, {block - 1, 1}, {block, 1}},
            {{0, 1}, {300, 1}, {255, 1}, {256, 1}, {511, 1}},
            {{0, block - 1}, {0, block}, {0, block + 1}},
            {{5, 40}, {block * 3, 17}, {0, 1}},
            {{250, 20}},
        };
        for (const auto& call : calls) {
          const Fixture f(g, n_heads, call, seed++);
          const std::vector<float> want = f.Naive();
          for (Isa isa : testing::SupportedIsas()) {
            auto b = testing::CpuBackendAt(isa, 2);
            ExpectClose(f.Run(*b), want, 4.0f,
                        ::testing::PrintToString(std::vector<int>{group, head_dim, block}) +
                            " isa " + cpu::IsaName(isa) + " first seq start " +
                            std::to_string(call[0].start_pos));
          }
        }
      }
    }
  }
}

TEST(AttentionTest, EveryLengthFromOneTo300) {
  const KvGeometry g{16, 3, 64};
  for (int len = 1; len <= 300; ++len) {
    const Fixture f(g, 9, {{len - 1, 1}}, len);
    const std::vector<float> want = f.Naive();
    for (Isa isa : testing::SupportedIsas()) {
      auto b = testing::CpuBackendAt(isa, 1);
      ExpectClose(f.Run(*b), want, 4.0f, "len " + std::to_string(len) + " " + cpu::IsaName(isa));
    }
  }
}

// Few long sequences split their chunks across threads; many short ones do not. Either way, the
// bits must equal the single-thread result.
TEST(AttentionTest, ResultsAreBitwiseIdenticalAtEveryThreadCount) {
  const KvGeometry g{16, 2, 64};
  const std::vector<std::vector<Seq>> calls = {
      {{1000, 1}},          // one long decode: split mode
      {{700, 1}, {30, 1}},  // two decodes
      {{600, 64}},          // long prefill chunk: not split
      {{100, 1}, {200, 1}, {300, 1}, {513, 1}, {10, 1}, {257, 1}, {40, 1}, {90, 1}},
  };
  for (const auto& call : calls) {
    const Fixture f(g, 6, call, 7);
    for (Isa isa : testing::SupportedIsas()) {
      std::vector<float> first;
      for (int threads : {1, 2, 3, 8}) {
        auto b = testing::CpuBackendAt(isa, threads);
        const std::vector<float> got = f.Run(*b);
        if (first.empty()) {
          first = got;
          ExpectClose(got, f.Naive(), 4.0f, "long context");
        } else {
          ASSERT_EQ(0, std::memcmp(first.data(), got.data(), got.size() * 4))
              << cpu::IsaName(isa) << " threads " << threads << " first seq start "
              << call[0].start_pos;
        }
      }
    }
  }
}

// A token's attention output has the same bits whether it was computed in a prefill call with
// other queries or alone as a decode step (rows do not interact).
TEST(AttentionTest, DecodeGivesTheBitsOfPrefill) {
  const KvGeometry g{16, 3, 64};
  for (Isa isa : testing::SupportedIsas()) {
    for (int start : {0, 250}) {
      const Fixture prefill(g, 9, {{start, 37}}, 11);
      auto b = testing::CpuBackendAt(isa, 2);
      const std::vector<float> all = prefill.Run(*b);
      const int64_t q_dim = 9 * 64;
      for (int j : {0, 7, 8, 36}) {
        AttentionSeq one = prefill.seqs[0];
        one.q_row = 0;
        one.n_q = 1;
        one.start_pos = start + j;
        std::vector<float> out(q_dim);
        b->Attention(g, prefill.pool.data(), &one, 1, prefill.q.data() + j * q_dim, 9, out.data());
        ASSERT_EQ(0, std::memcmp(out.data(), all.data() + j * q_dim, q_dim * 4))
            << cpu::IsaName(isa) << " start " << start << " query " << j;
      }
    }
  }
}

// Softmax must not overflow on large scores (stable: it subtracts the max).
TEST(AttentionTest, LargeScoresStayFinite) {
  const KvGeometry g{16, 1, 64};
  Fixture f(g, 1, {{40, 1}}, 3);
  for (auto& x : f.q) x *= 200.0f;  // scores in the thousands
  const std::vector<float> want = f.Naive();
  for (Isa isa : testing::SupportedIsas()) {
    auto b = testing::CpuBackendAt(isa, 2);
    const std::vector<float> got = f.Run(*b);
    for (float x : got) ASSERT_TRUE(std::isfinite(x));
    ExpectClose(got, want, 4.0f, cpu::IsaName(isa));
  }
}

}  // namespace
}  // namespace kvshare
