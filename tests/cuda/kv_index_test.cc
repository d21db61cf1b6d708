// The CUDA backend's index arithmetic and work planning, on the CPU (issue 24): the functions
// the kernels call (kernels/cuda/kv_index.h, __host__ __device__) and the host plan the backend
// launches (kernels/cuda/attention_plan.h), driven here by host loops that walk the work the
// way the kernels do and checked against the CPU reference (kernels/cpu/reference.h). The
// kernels' warp-level arithmetic itself runs only on a GPU (tests/cuda/cuda_ops_test.cc).
#include "kernels/cuda/kv_index.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kernels/cpu/reference.h"
#include "kernels/cuda/attention_plan.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvshare::cuda {
namespace {

using testing::RandomFloats;

// Sequences over one pool with shuffled, disjoint block tables.
struct Batch {
  KvGeometry g;
  std::vector<int> start, n;
  std::vector<std::vector<int32_t>> tables;
  int total_blocks = 0;
};

Batch MakeBatch(KvGeometry g, std::vector<int> start, std::vector<int> n, uint32_t seed) {
  Batch b{g, std::move(start), std::move(n), {}, 0};
  std::vector<int> blocks;
  for (size_t s = 0; s < b.start.size(); ++s) {
    blocks.push_back((b.start[s] + b.n[s] + g.block_tokens - 1) / g.block_tokens);
    b.total_blocks += blocks.back();
  }
  std::vector<int32_t> ids(b.total_blocks + 3);
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  for (size_t s = 0, next = 0; s < blocks.size(); next += blocks[s], ++s) {
    b.tables.emplace_back(ids.begin() + next, ids.begin() + next + blocks[s]);
  }
  b.total_blocks = static_cast<int>(ids.size());
  return b;
}

// Every sequence's WriteKv rows in one batch, stored element by element as WriteKvRowsKernel
// stores them, equal the reference's per-sequence WriteKv, bit for bit.
TEST(KvIndexTest, OneBatchedWriteStoresWhatPerSequenceWritesStore) {
  uint32_t seed = 1;
  for (int bt : {1, 5, 16}) {
    for (auto [kvh, hd] : {std::pair{1, 8}, {3, 64}, {8, 128}}) {
      const KvGeometry g{bt, kvh, hd, KvType::kF32};
      const int kv_dim = kvh * hd;
      // A prefill from scratch, a continuation mid-block, single decode tokens.
      Batch b = MakeBatch(g, {0, bt + 3, 2 * bt - 1, 7 * bt, 0}, {bt + 1, 2 * bt, 1, 1, 3}, seed);
      std::vector<float> want(size_t(b.total_blocks) * g.block_floats(), 0.0f), got = want;
      std::vector<KvWriteRow> rows;
      std::vector<std::vector<float>> ks, vs;
      for (size_t s = 0; s < b.start.size(); ++s) {
        ks.push_back(RandomFloats(int64_t(b.n[s]) * kv_dim, seed * 100 + s));
        vs.push_back(RandomFloats(int64_t(b.n[s]) * kv_dim, seed * 100 + s + 50));
      }
      for (size_t s = 0; s < b.start.size(); ++s) {
        cpu::ref::WriteKv(g, want.data(), b.tables[s].data(), b.start[s], b.n[s], ks[s].data(),
                          vs[s].data());
        AppendKvWriteRows(b.tables[s].data(), bt, kv_dim, b.start[s], b.n[s], ks[s].data(),
                          vs[s].data(), &rows);
      }
      const int64_t count = static_cast<int64_t>(rows.size()) * kv_dim;
      for (int64_t e = 0; e < count; ++e) {  // the kernel's loop body
        const KvWriteRow& r = rows[e / kv_dim];
        const int c = static_cast<int>(e % kv_dim);
        const int64_t dst = KvWriteDest(r, bt, kv_dim, c);
        got[dst] = r.k[c];
        got[dst + VPlaneOffset(bt, kv_dim)] = r.v[c];
      }
      ASSERT_EQ(got, want) << absl::StrFormat("bt %d kv_heads %d hd %d", bt, kvh, hd);
      ++seed;
    }
  }
}

TEST(KvIndexTest, KvRowOffsetMatchesTheBlockLayout) {
  const std::vector<int32_t> table = {7, 2, 9};
  const int bt = 4, kv_dim = 6;
  // Position 9 is block 2 (id 9), slot 1: 9 blocks of 2*4*6 floats, then one row.
  EXPECT_EQ(KvRowOffset(table.data(), 9, bt, kv_dim), 9 * 48 + 6);
  EXPECT_EQ(KvRowOffset(table.data(), 0, bt, kv_dim), 7 * 48);
  EXPECT_EQ(VPlaneOffset(bt, kv_dim), 24);
  // 64-bit offsets: block 40000 of a 2 x 16 x 8192 float block is past 2^31.
  const std::vector<int32_t> far = {40000};
  EXPECT_EQ(KvRowOffset(far.data(), 15, 16, 8192), 40000LL * 2 * 16 * 8192 + 15LL * 8192);
}

TEST(KvIndexTest, TileHeadRangesCoverEveryHeadOfEveryGroupOnce) {
  for (int n_kv : {1, 3, 8}) {
    for (int group : {1, 2, 3, 4, 5, 8, 12}) {
      std::vector<int> seen(n_kv * group, 0);
      const int chunks = TileHeadChunks(group);
      for (int y = 0; y < n_kv * chunks; ++y) {
        int kvh, h0, nh;
        TileHeadRange(y, group, &kvh, &h0, &nh);
        ASSERT_GE(nh, 1);
        ASSERT_LE(nh, kTileMaxHeads);
        for (int h = h0; h < h0 + nh; ++h) {
          ASSERT_EQ(h / group, kvh) << "head " << h << " is not of KV head " << kvh;
          ++seen[h];
        }
      }
      for (int h = 0; h < n_kv * group; ++h) {
        EXPECT_EQ(seen[h], 1) << "kv " << n_kv << " group " << group << " head " << h;
      }
      // A block's vectors: rows x heads fit the block's kTileVecs, 16..64 rows.
      const int rows = TileRows(group);
      EXPECT_LE(rows * TileHeads(group), kTileVecs);
      EXPECT_GE(rows, 16);
      EXPECT_LE(rows, 64);
    }
  }
}

TEST(KvIndexTest, PlanPutsPrefillsInTilesAndDecodeRowsInItemsCoveringEveryRowOnce) {
  const KvGeometry g{16, 2, 64, KvType::kF32};
  Batch b = MakeBatch(g, {0, 40, 100, 5, 0}, {70, 1, 8, 7, 21}, 3);
  std::vector<AttentionSeq> seqs;
  int rows = 0;
  for (size_t s = 0; s < b.start.size(); ++s) {
    seqs.push_back({rows, b.n[s], b.start[s], b.tables[s].data(),
                    static_cast<int>(b.tables[s].size()), nullptr});
    rows += b.n[s];
  }
  seqs.push_back({rows, 0, 3, b.tables[0].data(), 1, nullptr});  // no rows: no work
  for (int group : {1, 3, 4}) {
    for (bool tiled : {true, false}) {
      AttentionPlan plan;
      PlanAttention(seqs.data(), static_cast<int>(seqs.size()), g.block_tokens, group, g.n_kv_heads,
                    tiled, /*min_blocks=*/0, &plan);
      std::vector<int> covered(rows, 0), pos(rows, -1);
      int items_max = 0, tiles_max = 0;
      for (const AttentionItem& it : plan.items) {
        ++covered[it.row];
        pos[it.row] = it.pos;
        items_max = std::max(items_max, it.pos + 1);
      }
      for (const AttentionTile& t : plan.tiles) {
        ASSERT_GE(t.n_rows, 1);
        ASSERT_LE(t.n_rows, plan.rows_per_tile);
        for (int j = 0; j < t.n_rows; ++j) {
          ++covered[t.row + j];
          pos[t.row + j] = t.pos + j;
        }
        tiles_max = std::max(tiles_max, t.pos + t.n_rows);
      }
      EXPECT_EQ(plan.items_max_len, items_max);
      EXPECT_EQ(plan.tiles_max_len, tiles_max);
      for (size_t s = 0; s + 1 < seqs.size(); ++s) {
        for (int j = 0; j < seqs[s].n_q; ++j) {
          EXPECT_EQ(covered[seqs[s].q_row + j], 1) << "seq " << s << " row " << j;
          EXPECT_EQ(pos[seqs[s].q_row + j], seqs[s].start_pos + j);
        }
      }
      int tiled_rows = 0;
      for (const AttentionTile& t : plan.tiles) tiled_rows += t.n_rows;
      // Sequences 0 (70 rows), 2 (8) and 4 (21) have >= kTileMinRows rows; 1 and 3 do not.
      EXPECT_EQ(tiled_rows, tiled ? 70 + 8 + 21 : 0) << "group " << group;
      EXPECT_EQ(plan.rows_per_tile, TileRows(group));
    }
  }
}

// A short prefill whose tiles would not fill the GPU goes to the per-row kernel; a long one
// stays tiled however small its grid.
TEST(KvIndexTest, SmallShortPrefillsGoToThePerRowKernel) {
  std::vector<int32_t> table(200);
  std::iota(table.begin(), table.end(), 0);
  for (int start : {0, kTileLongContext}) {
    // 40 rows, group 3: two tiles of 21 and 19 rows x 3 KV heads = 6 blocks.
    const AttentionSeq seq{0, 40, start, table.data(), 200, nullptr};
    AttentionPlan plan;
    PlanAttention(&seq, 1, 16, 3, 3, true, /*min_blocks=*/6, &plan);
    EXPECT_EQ(plan.tiles.size(), 2u) << start;  // 6 blocks: enough
    PlanAttention(&seq, 1, 16, 3, 3, true, /*min_blocks=*/7, &plan);
    if (start == 0) {
      EXPECT_TRUE(plan.tiles.empty());
      ASSERT_EQ(plan.items.size(), 40u);
      for (int j = 0; j < 40; ++j) {
        EXPECT_EQ(plan.items[j].row, j);
        EXPECT_EQ(plan.items[j].pos, j);
      }
      EXPECT_EQ(plan.items_max_len, 40);
      EXPECT_EQ(plan.tiles_max_len, 0);
    } else {
      EXPECT_EQ(plan.tiles.size(), 2u);  // a long context stays tiled
      EXPECT_TRUE(plan.items.empty());
    }
  }
}

// Runs a plan the way the kernels do: the tiled kernel's blocks (grid x: tiles, y: KV head x
// head chunk), its vectors (TileVector), its key tiles of kTileKeys with a per-tile online
// softmax; the item kernel's rows; every K/V read through the uploaded table slice and
// KvRowOffset. Returns out and counts how often each (row, head) was written.
std::vector<float> RunPlan(const KvGeometry& g, const std::vector<float>& pool,
                           const AttentionPlan& plan, const std::vector<float>& q, int n_heads,
                           std::vector<int>* writes) {
  const int hd = g.head_dim, kv_dim = g.n_kv_heads * hd, group = n_heads / g.n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> out(q.size(), NAN);
  writes->assign(q.size() / hd, 0);
  auto attend = [&](int row, int pos, int head, const int32_t* table, int key_tile) {
    const int kvh = head / group;
    const float* qh = &q[(int64_t(row) * n_heads + head) * hd];
    double m = -INFINITY, l = 0;
    std::vector<double> acc(hd, 0.0);
    for (int t0 = 0; t0 <= pos; t0 += key_tile) {
      const int n_keys = std::min(key_tile, pos - t0 + 1);
      std::vector<double> sc(n_keys);
      double tmax = -INFINITY;
      for (int kk = 0; kk < n_keys; ++kk) {
        const float* kp = &pool[KvRowOffset(table, t0 + kk, g.block_tokens, kv_dim) + kvh * hd];
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += double(qh[d] * scale) * kp[d];
        sc[kk] = dot;
        tmax = std::max(tmax, dot);
      }
      const double m_new = std::max(m, tmax);
      const double corr = m == -INFINITY ? 0.0 : std::exp(m - m_new);
      l *= corr;
      for (double& a : acc) a *= corr;
      for (int kk = 0; kk < n_keys; ++kk) {
        const double p = std::exp(sc[kk] - m_new);
        l += p;
        const float* vp = &pool[KvRowOffset(table, t0 + kk, g.block_tokens, kv_dim) + kvh * hd +
                                VPlaneOffset(g.block_tokens, kv_dim)];
        for (int d = 0; d < hd; ++d) acc[d] += p * vp[d];
      }
      m = m_new;
    }
    float* o = &out[(int64_t(row) * n_heads + head) * hd];
    for (int d = 0; d < hd; ++d) o[d] = static_cast<float>(acc[d] / l);
    ++(*writes)[int64_t(row) * n_heads + head];
  };
  for (const AttentionTile& t : plan.tiles) {
    for (int y = 0; y < g.n_kv_heads * TileHeadChunks(group); ++y) {
      int kvh, h0, nh;
      TileHeadRange(y, group, &kvh, &h0, &nh);
      for (int v = 0; v < kTileVecs; ++v) {
        int r, h;
        TileVector(v, nh, &r, &h);
        if (r >= t.n_rows) continue;  // idle vector
        attend(t.row + r, t.pos + r, h0 + h, plan.tables.data() + t.table_offset, kTileKeys);
      }
    }
  }
  for (const AttentionItem& it : plan.items) {
    for (int head = 0; head < n_heads; ++head) {
      attend(it.row, it.pos, head, plan.tables.data() + it.table_offset, 1 << 30);
    }
  }
  return out;
}

TEST(KvIndexTest, ThePlanWalkedAsTheKernelsWalkItMatchesReferenceAttention) {
  uint32_t seed = 10;
  for (auto [n_heads, n_kv, hd] : {std::tuple{9, 3, 64}, {32, 32, 128}, {8, 1, 32}, {6, 2, 8}}) {
    for (int bt : {1, 16}) {
      const KvGeometry g{bt, n_kv, hd, KvType::kF32};
      const int kv_dim = n_kv * hd;
      // A long prefill (several query and key tiles), a continuation, decode rows.
      Batch b = MakeBatch(g, {0, 45, 70, 3}, {100, 33, 1, 8}, seed);
      std::vector<float> pool(size_t(b.total_blocks) * g.block_floats(), 0.0f);
      std::vector<AttentionSeq> seqs;
      int rows = 0;
      for (size_t s = 0; s < b.start.size(); ++s) {
        const int ctx = b.start[s] + b.n[s];
        const auto k = RandomFloats(int64_t(ctx) * kv_dim, seed + 7 * s, 2.0f);
        const auto v = RandomFloats(int64_t(ctx) * kv_dim, seed + 7 * s + 1);
        cpu::ref::WriteKv(g, pool.data(), b.tables[s].data(), 0, ctx, k.data(), v.data());
        seqs.push_back({rows, b.n[s], b.start[s], b.tables[s].data(),
                        static_cast<int>(b.tables[s].size()), nullptr});
        rows += b.n[s];
      }
      const auto q = RandomFloats(int64_t(rows) * n_heads * hd, seed + 99);
      std::vector<float> want(q.size());
      cpu::ref::Attention(g, pool.data(), seqs.data(), static_cast<int>(seqs.size()), q.data(),
                          n_heads, want.data());
      AttentionPlan plan;
      PlanAttention(seqs.data(), static_cast<int>(seqs.size()), bt, n_heads / n_kv, n_kv, true,
                    /*min_blocks=*/0, &plan);
      ASSERT_FALSE(plan.tiles.empty());
      ASSERT_FALSE(plan.items.empty());
      std::vector<int> writes;
      const auto got = RunPlan(g, pool, plan, q, n_heads, &writes);
      for (size_t i = 0; i < writes.size(); ++i) ASSERT_EQ(writes[i], 1) << "row x head " << i;
      for (size_t i = 0; i < want.size(); ++i) {
        ASSERT_NEAR(got[i], want[i], 1e-5 + 1e-5 * std::fabs(want[i]))
            << absl::StrFormat("heads %d/%d hd %d bt %d [%d]", n_heads, n_kv, hd, bt, i);
      }
      ++seed;
    }
  }
}

// The device's RoPE angle is pos * freq[i / 2] with the frequencies computed on the host by
// RopeInverseFrequencies: the same fp32 angle the reference forms, bit for bit (on the host,
// with the same cosf/sinf, the rotation is then identical; the device's sincosf differs by an
// ulp of the result, not of the angle).
TEST(KvIndexTest, HostRopeFrequenciesGiveTheReferenceAnglesExactly) {
  for (int head_dim : {2, 8, 64, 128, 256}) {
    for (float theta : {10000.0f, 500000.0f, 1e6f}) {
      std::vector<float> freq(head_dim / 2);
      RopeInverseFrequencies(head_dim, theta, freq.data());
      const std::vector<int32_t> pos = {0, 1, 15, 1023, 8191, 131071};
      const int n = static_cast<int>(pos.size());
      const auto x = RandomFloats(int64_t(n) * head_dim, head_dim);
      std::vector<float> want = x, got = x;
      cpu::ref::Rope(want.data(), pos.data(), n, 1, head_dim, theta);
      for (int t = 0; t < n; ++t) {
        for (int i = 0; i < head_dim; i += 2) {  // RopeKernel's body
          const float val = pos[t] * freq[i / 2];
          const float fcr = cosf(val), fci = sinf(val);
          float* v = &got[int64_t(t) * head_dim + i];
          const float v0 = v[0], v1 = v[1];
          v[0] = v0 * fcr - v1 * fci;
          v[1] = v0 * fci + v1 * fcr;
        }
      }
      EXPECT_EQ(got, want) << "head_dim " << head_dim << " theta " << theta;
    }
  }
}

}  // namespace
}  // namespace kvshare::cuda
