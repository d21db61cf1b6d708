// Attention over compact KV pools (f16, int8, int4): every SIMD level against the reference
// (ref::Attention dequantises position by position through kv_codec.h LoadKv and runs the
// softmax in double), over the grid of attention_test.cc — GQA ratios, head sizes, block
// sizes (int4: every head size its SIMD paths specialise, read in place and gathered), lengths
// around block and chunk boundaries, blocks that straddle chunks, several sequences with
// shuffled tables — with K/V written in two calls, so int4 blocks fill across calls and partial
// blocks are read from the tail. Then: the same bits at any thread count, and outputs close to
// exact fp32 attention by a margin each type's precision explains.
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
  int start_pos;   // tokens already in the cache
  int n_q;         // queries in this call
  int window = 0;  // AttentionSeq::window (0: none)
};

struct TypedFixture {
  KvGeometry g;
  int n_heads;
  std::vector<float> pool;  // the blocks' bytes, float-aligned
  std::vector<std::vector<int32_t>> tables;
  std::vector<std::vector<float>> tails;  // int4: each sequence's f16 tail
  std::vector<std::vector<float>> k, v;   // contiguous fp32 [ctx][kv_dim], as written
  std::vector<AttentionSeq> seqs;
  std::vector<float> q;

  TypedFixture(KvGeometry geometry, int heads, const std::vector<Seq>& specs, uint32_t seed)
      : g(geometry), n_heads(heads) {
    const int64_t kv_dim = g.kv_dim();
    int total_blocks = 0;
    for (const Seq& s : specs)
      total_blocks += (s.start_pos + s.n_q + g.block_tokens - 1) / g.block_tokens;
    std::vector<int32_t> ids(total_blocks + 3);
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(ids.begin(), ids.end(), rng);
    pool.assign(ids.size() * g.block_floats(), NAN);  // unused bytes are poison
    int next_id = 0, total_q = 0;
    tails.resize(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      const Seq& s = specs[i];
      const int ctx = s.start_pos + s.n_q;
      const int blocks = (ctx + g.block_tokens - 1) / g.block_tokens;
      tables.emplace_back(ids.begin() + next_id, ids.begin() + next_id + blocks);
      next_id += blocks;
      tails[i].assign(g.tail_bytes() / 4, NAN);
      k.push_back(testing::RandomFloats(ctx * kv_dim, seed++, 2.0f));
      v.push_back(testing::RandomFloats(ctx * kv_dim, seed++));
      void* tail = tails[i].empty() ? nullptr : tails[i].data();
      cpu::ref::WriteKv(g, pool.data(), tables.back().data(), 0, s.start_pos, k.back().data(),
                        v.back().data(), tail);
      cpu::ref::WriteKv(g, pool.data(), tables.back().data(), s.start_pos, s.n_q,
                        k.back().data() + s.start_pos * kv_dim,
                        v.back().data() + s.start_pos * kv_dim, tail);
      seqs.push_back({total_q, s.n_q, s.start_pos, tables.back().data(), blocks, tail, s.window});
      total_q += s.n_q;
    }
    q = testing::RandomFloats(static_cast<int64_t>(total_q) * n_heads * g.head_dim, seed, 1.5f);
  }

  std::vector<float> Reference() const {
    std::vector<float> out(q.size());
    cpu::ref::Attention(g, pool.data(), seqs.data(), static_cast<int>(seqs.size()), q.data(),
                        n_heads, out.data());
    return out;
  }

  // Attention over the fp32 values before they were stored.
  std::vector<float> Exact() const {
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

// Outputs are convex combinations of V rows: a tolerance relative to max |V|, growing with the
// square root of the head size (a score's float rounding over head_dim terms; 1x at 64).
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, float v_scale,
                 int head_dim, const std::string& what) {
  const double growth = std::sqrt(std::max(1.0, head_dim / 64.0));
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::fabs(got[i] - want[i]), (1e-5 * std::fabs(want[i]) + 2e-6 * v_scale) * growth)
        << what << " element " << i << " got " << got[i] << " want " << want[i];
  }
}

constexpr KvType kCompactTypes[] = {KvType::kF16, KvType::kInt8, KvType::kInt4, KvType::kK4V3,
                                    KvType::kInt4A};

TEST(KvTypeAttentionTest, EveryIsaMatchesTheReferenceOverTheGrid) {
  uint32_t seed = 1;
  for (KvType type : kCompactTypes) {
    // int4 groups are 32 channels of a head; the other types take any head size. int4's SIMD
    // paths read blocks in place with per-head-size code: every head size they specialise, and
    // 256 (Gemma 3), which AVX-512 reads gathered.
    // k4v3's V groups are 64 channels; int4a's 32, its K planes whole bytes (blocks of 8k);
    // int4a at 256 too (AVX2 reads it in place, AVX-512 gathered).
    const std::vector<int> head_dims = type == KvType::kInt4
                                           ? std::vector<int>{32, 64, 96, 128, 256}
                                       : type == KvType::kK4V3  ? std::vector<int>{64, 128, 256}
                                       : type == KvType::kInt4A ? std::vector<int>{32, 64, 256}
                                                                : std::vector<int>{8, 64};
    const std::vector<int> blocks =
        type == KvType::kInt4A ? std::vector<int>{16, 8, 24} : std::vector<int>{16, 4, 24};
    for (int group : {1, 2, 3, 4}) {
      for (int head_dim : head_dims) {
        // 24: blocks straddle the 256-position chunks, so a chunk starts and ends mid-block.
        for (int block : blocks) {
          const KvGeometry g{block, 2, head_dim, type};
          const std::vector<std::vector<Seq>> calls = {
              {{block - 2, 1}, {block - 1, 1}, {block, 1}},
              {{0, 1}, {300, 1}, {255, 1}, {256, 1}, {511, 1}},
              {{0, block - 1}, {0, block}, {0, block + 1}},
              {{5, 40}, {block * 3, 17}, {0, 1}},
              {{250, 20}},
              // A sliding window starts each query's positions mid-block, off a byte of
              // int4a's bit planes (start_pos + j - 36).
              {{300, 3, 37}, {block * 2 + 3, 5, 29}},
          };
          for (const auto& call : calls) {
            const TypedFixture f(g, 2 * group, call, seed++);
            const std::vector<float> want = f.Reference();
            for (Isa isa : testing::SupportedIsas()) {
              // int4, int4a: read in place (the default) and gathered (CpuBackendOptions).
              for (bool in_place : {true, false}) {
                if (!in_place && type != KvType::kInt4 && type != KvType::kInt4A) continue;
                CpuBackendOptions o;
                o.threads = 2;
                o.max_isa = isa;
                o.int4_in_place = in_place;
                ExpectClose(f.Run(*MakeCpuBackend(o)), want, 4.0f, head_dim,
                            std::string(KvTypeName(type)) + (in_place ? "" : " gathered") + " " +
                                ::testing::PrintToString(std::vector<int>{group, head_dim, block}) +
                                " isa " + cpu::IsaName(isa) + " first seq start " +
                                std::to_string(call[0].start_pos));
              }
            }
          }
        }
      }
    }
  }
}

TEST(KvTypeAttentionTest, ResultsAreBitwiseIdenticalAtEveryThreadCount) {
  for (KvType type : kCompactTypes) {
    const KvGeometry g{16, 2, 64, type};
    for (const auto& call : std::vector<std::vector<Seq>>{{{1000, 1}}, {{600, 64}}}) {
      const TypedFixture f(g, 6, call, 7);
      for (Isa isa : testing::SupportedIsas()) {
        std::vector<float> first;
        for (int threads : {1, 3, 8}) {
          const std::vector<float> got = f.Run(*testing::CpuBackendAt(isa, threads));
          if (first.empty()) {
            first = got;
          } else {
            ASSERT_EQ(0, std::memcmp(first.data(), got.data(), got.size() * 4))
                << KvTypeName(type) << " " << cpu::IsaName(isa) << " threads " << threads;
          }
        }
      }
    }
  }
}

// How far each type moves attention from the exact fp32 result, on N(0, 2) keys and N(0, 1)
// values over 300 positions. The bounds are the measured figures (f16 2.0e-4, int8 5.8e-3,
// int4 6.6e-2, k4v3 9.9e-2 RMS on this data) with 3-5x headroom; a wrong scale, a swapped
// nibble or a stale tail
// gives errors of order 1.
TEST(KvTypeAttentionTest, OutputsStayCloseToExactAttention) {
  const std::vector<std::pair<KvType, double>> bounds = {{KvType::kF16, 1e-3},
                                                         {KvType::kInt8, 2e-2},
                                                         {KvType::kInt4, 0.2},
                                                         {KvType::kK4V3, 0.3},
                                                         {KvType::kInt4A, 0.2}};
  for (auto [type, bound] : bounds) {
    const KvGeometry g{16, 2, 64, type};
    const TypedFixture f(g, 6, {{290, 10}, {37, 1}}, 5);
    const std::vector<float> exact = f.Exact();
    const std::vector<float> got = f.Run(*testing::CpuBackendAt(cpu::DetectIsa(), 2));
    double se = 0.0;
    for (size_t i = 0; i < got.size(); ++i) se += (got[i] - exact[i]) * (got[i] - exact[i]);
    const double rms = std::sqrt(se / got.size());
    std::printf("%s RMS %.3g\n", KvTypeName(type), rms);
    EXPECT_LT(rms, bound) << KvTypeName(type);
    EXPECT_GT(rms, 0.0) << KvTypeName(type) << " stored nothing lossy?";
  }
}

}  // namespace
}  // namespace kvshare
