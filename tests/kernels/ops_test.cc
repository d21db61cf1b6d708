// Element-wise ops, Embed and WriteKv of the CPU backend against the reference, per SIMD level.
#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/log_sum_exp.h"
#include "kernels/cpu/reference.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvshare {
namespace {

using cpu::Isa;

void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, double rel,
                double abs, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::fabs(got[i] - want[i]), rel * std::fabs(want[i]) + abs)
        << what << " element " << i << " got " << got[i] << " want " << want[i];
  }
}

TEST(OpsTest, RmsNormMatchesReference) {
  for (Isa isa : testing::SupportedIsas()) {
    auto b = testing::CpuBackendAt(isa, 2);
    for (int dim : {1, 7, 16, 64, 576, 1000}) {
      for (int n : {1, 3, 200}) {  // 200 x 576 runs on the pool
        const std::vector<float> x = testing::RandomFloats(n * dim, dim + n, 4.0f);
        const std::vector<float> w = testing::RandomFloats(dim, 3);
        std::vector<float> want(n * dim), got(n * dim), in_place(x);
        cpu::ref::RmsNorm(x.data(), w.data(), n, dim, 1e-5f, want.data());
        b->RmsNorm(x.data(), w.data(), n, dim, 1e-5f, got.data());
        ExpectNear(got, want, 1e-5, 1e-6, std::string("rmsnorm ") + cpu::IsaName(isa));
        b->RmsNorm(in_place.data(), w.data(), n, dim, 1e-5f, in_place.data());  // out aliases x
        ASSERT_EQ(0, std::memcmp(in_place.data(), got.data(), got.size() * 4));
      }
    }
  }
}

// RoPE must be llama2.c's fp32 arithmetic exactly (the stories260K golden values come from it).
TEST(OpsTest, RopeIsBitwiseTheLlama2cArithmetic) {
  for (Isa isa : testing::SupportedIsas()) {
    auto b = testing::CpuBackendAt(isa, 2);
    for (int head_dim : {8, 64, 128}) {
      for (float theta : {10000.0f, 100000.0f}) {
        for (int n : {1, 5, 300}) {
          const int n_heads = 9;
          std::vector<int32_t> pos(n);
          for (int t = 0; t < n; ++t) pos[t] = (t * 37 + 3) % 2048;
          std::vector<float> want = testing::RandomFloats(n * n_heads * head_dim, n + head_dim);
          std::vector<float> got = want;
          cpu::ref::Rope(want.data(), pos.data(), n, n_heads, head_dim, theta);
          b->Rope(got.data(), pos.data(), n, n_heads, head_dim, theta);
          ASSERT_EQ(0, std::memcmp(want.data(), got.data(), got.size() * 4))
              << cpu::IsaName(isa) << " head_dim " << head_dim << " theta " << theta << " n " << n;
        }
      }
    }
  }
}

TEST(OpsTest, RopeRotatesPairsByPositionTimesFrequency) {
  // head_dim 4: pair 0 has frequency 1, pair 1 has theta^(-1/2). Position 1, theta 100.
  auto b = MakeCpuBackend(1);
  std::vector<float> x = {1, 0, 1, 0};
  const int32_t pos = 1;
  b->Rope(x.data(), &pos, 1, 1, 4, 100.0f);
  EXPECT_NEAR(x[0], std::cos(1.0), 1e-6);
  EXPECT_NEAR(x[1], std::sin(1.0), 1e-6);
  EXPECT_NEAR(x[2], std::cos(0.1), 1e-6);
  EXPECT_NEAR(x[3], std::sin(0.1), 1e-6);
}

TEST(OpsTest, SiluMulAndAddMatchReference) {
  for (Isa isa : testing::SupportedIsas()) {
    auto b = testing::CpuBackendAt(isa, 2);
    for (int64_t count : {1, 15, 17, 1536, 200000}) {
      std::vector<float> g = testing::RandomFloats(count, 1, 6.0f);
      const std::vector<float> u = testing::RandomFloats(count, 2);
      if (count > 4) {
        g[0] = -100.0f;  // exp overflow side: silu -> -0
        g[1] = 100.0f;
        g[2] = -88.0f;
      }
      std::vector<float> want(count), got(count);
      cpu::ref::SiluMul(g.data(), u.data(), count, want.data());
      b->SiluMul(g.data(), u.data(), count, got.data());
      ExpectNear(got, want, 2e-6, 1e-30, std::string("silu ") + cpu::IsaName(isa));
      std::vector<float> x1 = g, x2 = g;
      cpu::ref::Add(x1.data(), u.data(), count);
      b->Add(x2.data(), u.data(), count);
      ASSERT_EQ(0, std::memcmp(x1.data(), x2.data(), count * 4));
    }
  }
}

// Gemma 3's GeGLU: the SIMD tanh (through the vectorised exp) against the double reference.
TEST(OpsTest, GeluMulMatchesReference) {
  for (Isa isa : testing::SupportedIsas()) {
    auto b = testing::CpuBackendAt(isa, 2);
    for (int64_t count : {1, 15, 17, 2048, 200000}) {
      std::vector<float> g = testing::RandomFloats(count, 3, 6.0f);
      const std::vector<float> u = testing::RandomFloats(count, 4);
      if (count > 5) {
        g[0] = -100.0f;  // tanh saturates: gelu -> -0 and the input itself
        g[1] = 100.0f;
        g[2] = -4.0f;
        g[3] = -8.0f;  // gelu ~ -5e-21 (the reference's 1 + tanh cancels to 0 in double)
        g[4] = 0.0f;
      }
      std::vector<float> want(count), got(count);
      cpu::ref::GeluMul(g.data(), u.data(), count, want.data());
      b->GeluMul(g.data(), u.data(), count, got.data());
      ExpectNear(got, want, 4e-6, 1e-12, std::string("gelu ") + cpu::IsaName(isa));
    }
  }
}

// The log-softmax normaliser every reported NLL uses, against long double sums: rows of
// logits as a model gives them (a spread of ~40 nats, one vocabulary's length among them),
// equal logits (exactly m + log n) and one dominating logit.
TEST(OpsTest, LogSumExpMatchesALongDoubleSum) {
  auto reference = [](const std::vector<float>& x) {
    long double m = x[0];
    for (float v : x) m = std::max<long double>(m, v);
    long double s = 0;
    for (float v : x) s += std::exp(static_cast<long double>(v) - m);
    return static_cast<double>(m + std::log(s));
  };
  std::vector<std::vector<float>> rows;
  for (int n : {1, 7, 16, 17, 1000, 49152}) rows.push_back(testing::RandomFloats(n, n, 20.0f));
  rows.push_back(std::vector<float>(49152, 3.25f));
  std::vector<float> peak = testing::RandomFloats(4099, 9, 1.0f);
  peak[1234] = 60.0f;
  rows.push_back(peak);
  for (Isa isa : testing::SupportedIsas()) {
    for (const std::vector<float>& x : rows) {
      const double got = cpu::LogSumExp(isa, x.data(), int64_t(x.size()));
      EXPECT_NEAR(got, reference(x), 2e-7) << cpu::IsaName(isa) << " n " << x.size();
    }
    EXPECT_NEAR(cpu::LogSumExp(isa, rows[6].data(), 49152), 3.25 + std::log(49152.0), 2e-7);
  }
}

// The NLL of each row's target (what the searches' calibration metric sums): the CPU backend
// reads the logits in place on its threads and gives exactly log-sum-exp minus the target's
// logit (the figures LogProb gave before); Backend's default (the CUDA plugin's) agrees with a
// long double reference; a negative target gives 0.
TEST(OpsTest, TargetNllIsTheLogSoftmaxLossOfEachRowsTarget) {
  const int vocab = 4099, rows = 37;
  std::vector<float> logits = testing::RandomFloats(size_t(rows) * vocab, 21, 20.0f);
  logits[size_t(5) * vocab + 17] = 200.0f;  // a dominating logit (sd 20), the target of row 5
  std::vector<int32_t> targets(rows);
  for (int r = 0; r < rows; ++r) targets[r] = (r * 977) % vocab;
  targets[5] = 17;
  targets[9] = -1;
  auto reference = [&](int r) {
    const float* x = logits.data() + size_t(r) * vocab;
    long double m = x[0];
    for (int v = 0; v < vocab; ++v) m = std::max<long double>(m, x[v]);
    long double s = 0;
    for (int v = 0; v < vocab; ++v) s += std::exp(static_cast<long double>(x[v]) - m);
    return static_cast<double>(m + std::log(s) - x[targets[r]]);
  };
  for (Isa isa : testing::SupportedIsas()) {
    auto b = testing::CpuBackendAt(isa, 2);
    std::vector<double> got(rows, -1.0), fallback(rows, -1.0);
    b->TargetNll(logits.data(), rows, vocab, targets.data(), got.data());
    b->Backend::TargetNll(logits.data(), rows, vocab, targets.data(), fallback.data());
    for (int r = 0; r < rows; ++r) {
      if (targets[r] < 0) {
        EXPECT_EQ(got[r], 0.0);
        EXPECT_EQ(fallback[r], 0.0);
        continue;
      }
      const float* x = logits.data() + size_t(r) * vocab;
      EXPECT_EQ(got[r], cpu::LogSumExp(isa, x, vocab) - double(x[targets[r]]))
          << cpu::IsaName(isa) << " row " << r;
      EXPECT_NEAR(got[r], reference(r), 2e-7) << cpu::IsaName(isa) << " row " << r;
      EXPECT_NEAR(fallback[r], reference(r), 1e-9) << "default, row " << r;
    }
    EXPECT_LT(got[5], 1e-6);  // the dominating logit's own target
  }
}

TEST(OpsTest, EmbedDequantizesTheRowsOfAnyType) {
  for (Isa isa : testing::SupportedIsas()) {
    auto b = testing::CpuBackendAt(isa, 2);
    for (DType type : testing::AllDTypes()) {
      const int64_t cols = testing::ColsFor(type, 96);
      const testing::OwnedTensor table = testing::RandomWeight(type, 37, cols, 4);
      auto p = b->Prepare(table.tensor);
      ASSERT_TRUE(p.ok());
      const std::vector<int32_t> ids = {0, 36, 5, 5, 16, 17};
      std::vector<float> want(ids.size() * cols), got(ids.size() * cols);
      cpu::ref::Embed(table.tensor, ids.data(), ids.size(), want.data());
      b->Embed(**p, ids.data(), ids.size(), got.data());
      ASSERT_EQ(0, std::memcmp(want.data(), got.data(), got.size() * 4))
          << GetDTypeInfo(type).name << " " << cpu::IsaName(isa);
    }
  }
}

TEST(OpsTest, WriteKvMatchesReferenceThroughAShuffledTable) {
  const KvGeometry g{4, 3, 8};
  const std::vector<int32_t> table = {5, 2, 7, 0};
  auto b = MakeCpuBackend(2);
  std::vector<float> want(8 * g.block_floats(), -1.0f), got = want;
  const int kv_dim = g.n_kv_heads * g.head_dim;
  for (auto [start, n] : std::vector<std::pair<int, int>>{{0, 1}, {1, 6}, {7, 9}}) {
    const std::vector<float> k = testing::RandomFloats(n * kv_dim, start);
    const std::vector<float> v = testing::RandomFloats(n * kv_dim, start + 100);
    cpu::ref::WriteKv(g, want.data(), table.data(), start, n, k.data(), v.data());
    b->WriteKv(g, got.data(), table.data(), start, n, k.data(), v.data(), nullptr);
  }
  EXPECT_EQ(want, got);
}

}  // namespace
}  // namespace kvshare
