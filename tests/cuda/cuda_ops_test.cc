// Every op of the CUDA backend against the CPU reference (kernels/cpu/reference.h) over a grid
// of shapes: odd sizes, every weight type, GQA ratios, head sizes up to the kernel's limit,
// block sizes and lengths around block boundaries, several sequences in one call, identity and
// shared block tables, decode over long contexts (split across the sequence). Skipped, with the
// reason, where no CUDA device is usable.
//
// Tolerances: weights and GEMM inputs are rounded to fp16 (2^-11 relative each), so a matmul
// output may move by ~2 * 2^-11 of sum |x * w| (taken from the reference's abs_out); everything
// else runs in fp32 against double references.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/cpu/reference.h"
#include "kernels/tensor.h"
#include "tests/cuda/cuda_test_util.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvshare {
namespace {

using testing::Cuda;
using testing::RandomFloats;
using testing::RandomWeight;
using testing::ToDevice;
using testing::ToHost;

void ExpectAllNear(const std::vector<float>& got, const std::vector<float>& want, double abs_tol,
                   double rel_tol, const std::string& where) {
  ASSERT_EQ(got.size(), want.size()) << where;
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double tol = abs_tol + rel_tol * std::fabs(want[i]);
    if (!(std::fabs(got[i] - want[i]) <= tol) && ++bad <= 5) {
      ADD_FAILURE() << where << ": [" << i << "] got " << got[i] << " want " << want[i]
                    << " (tolerance " << tol << ")";
    }
  }
  EXPECT_EQ(bad, 0) << where;
}

void CheckMatMul(Backend& b, DType type, int rows, int cols, int n, double rel, uint32_t seed) {
  const auto w = RandomWeight(type, rows, cols, seed);
  const auto x = RandomFloats(static_cast<int64_t>(n) * cols, seed + 1);
  std::vector<float> want(static_cast<size_t>(n) * rows), mag(want.size());
  cpu::ref::MatMul(w.tensor, x.data(), n, want.data(), mag.data());
  auto pw = b.Prepare(w.tensor);
  ASSERT_TRUE(pw.ok()) << pw.status();
  auto dx = ToDevice(b, x);
  auto dout = ToDevice(b, std::vector<float>(want.size(), NAN));
  b.MatMul(**pw, dx->f32(), n, dout->f32());
  const auto got = ToHost(b, *dout, want.size());
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double tol = rel * mag[i] + 1e-5;
    if (!(std::fabs(got[i] - want[i]) <= tol) && ++bad <= 5) {
      ADD_FAILURE() << absl::StrFormat("%s %dx%d n=%d [%d]: got %g want %g (tol %g)",
                                       GetDTypeInfo(type).name, rows, cols, n, i, got[i], want[i],
                                       tol);
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(CudaOpsTest, MatMulMatchesReferenceForEveryTypeAndShape) {
  KVSHARE_REQUIRE_CUDA();
  Backend& b = *Cuda().backend;
  uint32_t seed = 1;
  for (DType type : testing::CudaDTypes()) {
    const bool quant = testing::IsQuantized(type);
    for (auto [rows, cols] : {std::pair{1, 32}, {7, 64}, {33, 96}, {129, 160}, {576, 1536}}) {
      if (!quant && cols == 32) cols = 31;  // odd widths where the type allows them
      for (int n : {1, 2, 5, 17, 64, 130}) CheckMatMul(b, type, rows, cols, n, 4e-3, seed++);
    }
  }
}

TEST(CudaOpsTest, MatMulWithBf16WeightsMatchesReferenceWithinBf16Rounding) {
  KVSHARE_REQUIRE_CUDA();
  auto& bf = Cuda(/*bf16=*/true);
  ASSERT_NE(bf.backend, nullptr) << bf.skip_reason;
  for (DType type : {DType::kBF16, DType::kF32, DType::kQ4_1}) {
    for (int n : {1, 9, 64}) CheckMatMul(*bf.backend, type, 77, 256, n, 2.5e-2, 40 + n);
  }
}

TEST(CudaOpsTest, EmbedGathersRowsAsFp32) {
  KVSHARE_REQUIRE_CUDA();
  Backend& b = *Cuda().backend;
  for (DType type : testing::CudaDTypes()) {
    const int vocab = 300, dim = testing::IsQuantized(type) ? 96 : 77;
    const auto table = RandomWeight(type, vocab, dim, 7);
    const std::vector<int32_t> ids = {0, 299, 5, 5, 123, 1, 298};
    const int n = static_cast<int>(ids.size());
    std::vector<float> want(static_cast<size_t>(n) * dim);
    cpu::ref::Embed(table.tensor, ids.data(), n, want.data());
    auto pw = b.Prepare(table.tensor);
    ASSERT_TRUE(pw.ok()) << pw.status();
    auto out = ToDevice(b, std::vector<float>(want.size(), NAN));
    b.Embed(**pw, ids.data(), n, out->f32());
    // fp16 storage: one rounding of each element.
    ExpectAllNear(ToHost(b, *out, want.size()), want, 1e-6, 1.0 / 2048,
                  absl::StrCat("embed ", GetDTypeInfo(type).name));
  }
}

TEST(CudaOpsTest, RmsNormMatchesReferenceInPlaceAndOutOfPlace) {
  KVSHARE_REQUIRE_CUDA();
  Backend& b = *Cuda().backend;
  for (int dim : {1, 7, 64, 255, 576, 1000, 4096, 5120}) {
    for (int n : {1, 3, 31}) {
      const auto x = RandomFloats(static_cast<int64_t>(n) * dim, dim + n, 3.0f);
      const auto w = RandomFloats(dim, dim);
      std::vector<float> want(x.size());
      cpu::ref::RmsNorm(x.data(), w.data(), n, dim, 1e-5f, want.data());
      auto dx = ToDevice(b, x), dw = ToDevice(b, w), dout = ToDevice(b, x);
      b.RmsNorm(dx->f32(), dw->f32(), n, dim, 1e-5f, dout->f32());
      ExpectAllNear(ToHost(b, *dout, x.size()), want, 1e-6, 1e-5,
                    absl::StrFormat("rmsnorm dim %d n %d", dim, n));
      b.RmsNorm(dx->f32(), dw->f32(), n, dim, 1e-5f, dx->f32());  // out aliases x
      ExpectAllNear(ToHost(b, *dx, x.size()), want, 1e-6, 1e-5,
                    absl::StrFormat("rmsnorm in place dim %d n %d", dim, n));
    }
  }
}

TEST(CudaOpsTest, RopeMatchesReferenceAtLargePositions) {
  KVSHARE_REQUIRE_CUDA();
  Backend& b = *Cuda().backend;
  for (int head_dim : {2, 8, 64, 128, 256}) {
    for (int n_heads : {1, 3, 9}) {
      for (float theta : {10000.0f, 500000.0f}) {
        const int n = 6;
        const std::vector<int32_t> pos = {0, 1, 15, 16, 1023, 8191};
        const auto x = RandomFloats(int64_t(n) * n_heads * head_dim, head_dim * 7 + n_heads);
        std::vector<float> want = x;
        cpu::ref::Rope(want.data(), pos.data(), n, n_heads, head_dim, theta);
        auto dx = ToDevice(b, x);
        b.Rope(dx->f32(), pos.data(), n, n_heads, head_dim, theta);
        // The angle pos * freq is the reference's, bit for bit (the frequencies are computed
        // on the host: kernels/cuda/attention_plan.h); only sincosf's last ulp may differ.
        ExpectAllNear(ToHost(b, *dx, x.size()), want, 2e-5, 1e-5,
                      absl::StrFormat("rope hd %d heads %d theta %g", head_dim, n_heads, theta));
      }
    }
  }
}

TEST(CudaOpsTest, ElementwiseOpsAndCopyMatchReference) {
  KVSHARE_REQUIRE_CUDA();
  Backend& b = *Cuda().backend;
  for (int64_t count : {1LL, 31LL, 1000LL, 1LL << 20, (1LL << 20) + 17}) {
    const auto g = RandomFloats(count, 1, 4.0f), u = RandomFloats(count, 2);
    std::vector<float> want(count);
    cpu::ref::SiluMul(g.data(), u.data(), count, want.data());
    auto dg = ToDevice(b, g), du = ToDevice(b, u), dout = ToDevice(b, std::vector<float>(count));
    b.SiluMul(dg->f32(), du->f32(), count, dout->f32());
    ExpectAllNear(ToHost(b, *dout, count), want, 1e-6, 1e-5, "silu_mul");
    b.SiluMul(dg->f32(), du->f32(), count, dg->f32());  // in place, as the engine calls it
    ExpectAllNear(ToHost(b, *dg, count), want, 1e-6, 1e-5, "silu_mul in place");

    std::vector<float> sum = g;
    cpu::ref::Add(sum.data(), u.data(), count);
    auto dx = ToDevice(b, g);
    b.Add(dx->f32(), du->f32(), count);
    ExpectAllNear(ToHost(b, *dx, count), sum, 0, 0, "add");

    auto dcopy = ToDevice(b, std::vector<float>(count + 2, 0.0f));
    b.Copy(du->f32(), count * 4, dcopy->f32() + 1);
    const auto copied = ToHost(b, *dcopy, count + 2);
    EXPECT_EQ(copied.front(), 0.0f);
    EXPECT_EQ(copied.back(), 0.0f);
    EXPECT_TRUE(std::equal(u.begin(), u.end(), copied.begin() + 1));
  }
}

// A pool of `blocks` blocks and a shuffled table per sequence.
struct PagedCase {
  KvGeometry g;
  int n_heads;
  std::vector<int> start, n_q;  // per sequence
  bool shared_table = false;    // every sequence reads sequence 0's table (a sharing layer)
};

void CheckWriteAndAttention(Backend& b, const PagedCase& c, uint32_t seed) {
  const KvGeometry& g = c.g;
  const int kv_dim = g.n_kv_heads * g.head_dim, q_dim = c.n_heads * g.head_dim;
  const int n_seqs = static_cast<int>(c.start.size());
  std::vector<int> blocks_of(n_seqs);
  int total_blocks = 0;
  for (int s = 0; s < n_seqs; ++s) {
    blocks_of[s] = (c.start[s] + c.n_q[s] + g.block_tokens - 1) / g.block_tokens;
    total_blocks += blocks_of[s];
  }
  std::vector<int32_t> ids(total_blocks + 2);
  std::iota(ids.begin(), ids.end(), 0);
  std::mt19937 rng(seed);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<std::vector<int32_t>> tables;
  for (int s = 0, next = 0; s < n_seqs; next += blocks_of[s], ++s) {
    tables.emplace_back(ids.begin() + next, ids.begin() + next + blocks_of[s]);
  }
  std::vector<float> pool(ids.size() * g.block_floats(), 0.0f);
  auto dpool = ToDevice(b, pool);
  // Fill through WriteKv on both sides: the history in one call, then the new rows in another
  // (crossing block boundaries wherever start_pos is not a multiple of block_tokens).
  for (int s = 0; s < n_seqs; ++s) {
    if (c.shared_table && s > 0) continue;
    const int ctx = c.start[s] + c.n_q[s];
    const auto k = RandomFloats(int64_t(ctx) * kv_dim, seed + 10 * s, 2.0f);
    const auto v = RandomFloats(int64_t(ctx) * kv_dim, seed + 10 * s + 1);
    auto dk = ToDevice(b, k), dv = ToDevice(b, v);
    const int parts[2][2] = {{0, c.start[s]}, {c.start[s], c.n_q[s]}};
    for (const auto& part : parts) {
      if (part[1] == 0) continue;
      cpu::ref::WriteKv(g, pool.data(), tables[s].data(), part[0], part[1],
                        k.data() + int64_t(part[0]) * kv_dim, v.data() + int64_t(part[0]) * kv_dim);
      b.WriteKv(g, dpool->f32(), tables[s].data(), part[0], part[1],
                dk->f32() + int64_t(part[0]) * kv_dim, dv->f32() + int64_t(part[0]) * kv_dim,
                nullptr);
    }
  }
  ExpectAllNear(ToHost(b, *dpool, pool.size()), pool, 0, 0, "pool after WriteKv");

  std::vector<AttentionSeq> seqs;
  int rows = 0;
  for (int s = 0; s < n_seqs; ++s) {
    const auto& table = tables[c.shared_table ? 0 : s];
    seqs.push_back({rows, c.n_q[s], c.start[s], table.data(), static_cast<int>(table.size())});
    rows += c.n_q[s];
  }
  const auto q = RandomFloats(int64_t(rows) * q_dim, seed + 99);
  std::vector<float> want(q.size());
  cpu::ref::Attention(g, pool.data(), seqs.data(), n_seqs, q.data(), c.n_heads, want.data());
  auto dq = ToDevice(b, q), dout = ToDevice(b, std::vector<float>(q.size(), NAN));
  b.Attention(g, dpool->f32(), seqs.data(), n_seqs, dq->f32(), c.n_heads, dout->f32());
  ExpectAllNear(
      ToHost(b, *dout, q.size()), want, 2e-4, 2e-4,
      absl::StrFormat("attention bt %d kv_heads %d heads %d hd %d seqs %d shared %d",
                      g.block_tokens, g.n_kv_heads, c.n_heads, g.head_dim, n_seqs, c.shared_table));
}

TEST(CudaOpsTest, PagedAttentionPrefillMatchesReferenceOverGqaRatiosAndBlockBoundaries) {
  KVSHARE_REQUIRE_CUDA();
  Backend& b = *Cuda().backend;
  uint32_t seed = 1000;
  for (int head_dim : {8, 64, 100, 128, 256}) {
    for (auto [n_heads, n_kv] : {std::pair{1, 1}, {8, 4}, {9, 3}, {32, 8}, {12, 12}}) {
      if (head_dim == 256 && n_heads > 12) continue;
      for (int bt : {1, 16, 32}) {
        PagedCase c{{bt, n_kv, head_dim}, n_heads, {}, {}};
        // One prompt from scratch, one continuing a cache mid-block, one a single token.
        c.start = {0, bt + 3, 2 * bt - 1};
        c.n_q = {bt + 1, 2 * bt, 1};
        CheckWriteAndAttention(b, c, seed++);
      }
    }
  }
}

TEST(CudaOpsTest, PagedAttentionDecodeOverLongContextsSplitsAcrossTheSequence) {
  KVSHARE_REQUIRE_CUDA();
  Backend& b = *Cuda().backend;
  uint32_t seed = 2000;
  for (int ctx : {63, 64, 65, 511, 2047, 4100}) {
    for (auto [n_heads, n_kv, hd] : {std::tuple{32, 32, 128}, {9, 3, 64}, {40, 8, 128}}) {
      PagedCase c{{16, n_kv, hd}, n_heads, {ctx - 1, ctx / 2, 0, 7}, {1, 1, 1, 1}};
      CheckWriteAndAttention(b, c, seed++);
    }
  }
}

TEST(CudaOpsTest, SequencesSharingOneBlockTableReadTheSameCache) {
  KVSHARE_REQUIRE_CUDA();
  Backend& b = *Cuda().backend;
  for (int bt : {4, 16}) {
    // Sequence 0 owns the table; the others read (a prefix of) it.
    PagedCase c{{bt, 2, 64}, 6, {3 * bt, 3 * bt, bt}, {bt + 1, 1, 2}, /*shared_table=*/true};
    CheckWriteAndAttention(b, c, 3000 + bt);
  }
}

TEST(CudaOpsTest, PrepareRejectsWidthsThatAreNotWholeBlocks) {
  KVSHARE_REQUIRE_CUDA();
  Backend& b = *Cuda().backend;
  auto w = RandomWeight(DType::kQ4_0, 4, 64, 1);
  w.tensor.shape = {48, 4};
  w.tensor.name = "blk.0.attn_q.weight";
  auto p = b.Prepare(w.tensor);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("blk.0.attn_q.weight"), std::string::npos);
  EXPECT_NE(p.status().message().find("48"), std::string::npos);
}

}  // namespace
}  // namespace kvshare
