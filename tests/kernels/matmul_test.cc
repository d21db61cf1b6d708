// MatMul of every fast path against the plain reference, over a grid of shapes, types, batch
// sizes and SIMD levels; and the same bits at every thread count.
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/packed_weight.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/reference.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvshare {
namespace {

using cpu::Isa;
using cpu::MatMulOptions;
using cpu::QuantGemm;
using testing::OwnedTensor;

constexpr int kCols[] = {32, 64, 96, 576, 1536};
constexpr int kRows[] = {1, 3, 17, 192, 577};
constexpr int kTokens[] = {1, 2, 5, 16, 33, 100};

struct Case {
  OwnedTensor w;
  int n;
  std::vector<float> x;
  std::vector<float> ref;       // exact fp32 weights x fp32 activations, double sums
  std::vector<float> ref_abs;   // sum |x * w| per output
  std::vector<float> ref_q8;    // quantized types: int8 activations, exact integer dots
  std::vector<float> ref_q8x2;  // quantized types: two int8 digits, exact integer dots
  std::vector<float> bound;     // quantized types: |ref - ref_q8| <= bound (see below)
};

// The int8-activation error bound: x[c] is replaced by s_b * q[c] with |x[c] - s_b q[c]| <=
// s_b / 2, so each output moves by at most sum_c |Wq[r][c]| * s_b(c) / 2, where Wq is the part
// of the weight multiplied by the quantized x: all of it, except the offset of Q4_1, Q5_1, Q4_K
// and Q5_K (its term uses the exact sum of x). Two digits leave at most s_b / 512 of each x,
// s_b / 256 where the second digit was clamped (quant.h): the bound over 128.
std::vector<float> Int8Bound(const Tensor& w, const std::vector<float>& x, int n) {
  const int64_t rows = w.rows(), cols = w.cols();
  std::vector<float> row(cols), bound(n * rows);
  for (int64_t r = 0; r < rows; ++r) {
    cpu::DequantizeRow(w.type, w.row_data(r), cols, row.data());
    for (int t = 0; t < n; ++t) {
      double b = 0.0;
      for (int64_t blk = 0; blk < cols / 32; ++blk) {
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[t * cols + blk * 32 + j]));
        double m = 0.0;
        if (w.type == DType::kQ4_1) {
          m = cpu::Fp16ToFp32(reinterpret_cast<const cpu::BlockQ4_1*>(w.row_data(r))[blk].m);
        } else if (cpu::HasBlock32Form(w.type)) {
          cpu::Block32 b32;
          cpu::DecodeBlock32(w.type, w.row_data(r), blk, &b32);
          m = b32.offset;
        }
        double wsum = 0.0;
        for (int j = 0; j < 32; ++j) wsum += std::fabs(row[blk * 32 + j] - m);
        b += wsum * amax / 127.0 / 2.0;
      }
      bound[t * rows + r] = static_cast<float>(b);
    }
  }
  return bound;
}

Case MakeCase(DType type, int rows, int cols, int n, uint32_t seed) {
  Case c{testing::RandomWeight(type, rows, cols, seed),
         n,
         testing::RandomFloats(static_cast<int64_t>(n) * cols, seed + 1),
         {},
         {},
         {},
         {},
         {}};
  c.ref.resize(static_cast<size_t>(n) * rows);
  c.ref_abs.resize(c.ref.size());
  cpu::ref::MatMul(c.w.tensor, c.x.data(), n, c.ref.data(), c.ref_abs.data());
  if (testing::IsQuantized(type)) {
    c.ref_q8.resize(c.ref.size());
    cpu::ref::MatMulQ8Activations(c.w.tensor, c.x.data(), n, c.ref_q8.data());
    c.ref_q8x2.resize(c.ref.size());
    cpu::ref::MatMulQ8Activations(c.w.tensor, c.x.data(), n, c.ref_q8x2.data(),
                                  /*two_digits=*/true);
    c.bound = Int8Bound(c.w.tensor, c.x, n);
  }
  return c;
}

std::vector<float> RunMatMul(Backend& b, const Tensor& w, const std::vector<float>& x, int n) {
  auto pw = b.Prepare(w);
  EXPECT_TRUE(pw.ok()) << pw.status();
  std::vector<float> out(static_cast<size_t>(n) * w.rows(), NAN);
  b.MatMul(**pw, x.data(), n, out.data());
  return out;
}

// |got - want| <= rel * (sum of |terms|): the fp32 rounding of a length-`cols` dot product,
// independent of how much the sum cancels.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want,
                 const std::vector<float>& scale, double rel, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i) {
    const double tol = rel * scale[i] + 1e-30;
    if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol)) {
      ADD_FAILURE() << what << " element " << i << ": got " << got[i] << " want " << want[i]
                    << " tol " << tol;
      ++bad;
    }
  }
}

// The modes a quantized matmul can run in, and what each is compared with.
struct Mode {
  const char* name;
  MatMulOptions options;
};

std::vector<Mode> Modes(DType type) {
  MatMulOptions int8_gemm;  // int8 activations, integer GEMM for large n
  int8_gemm.activations = cpu::Activations::kInt8;
  MatMulOptions int8_sgemm = int8_gemm;
  int8_sgemm.quant_gemm = QuantGemm::kSgemm;
  MatMulOptions int8x2 = int8_gemm;
  int8x2.activations = cpu::Activations::kInt8x2;
  MatMulOptions exact;
  exact.activations = cpu::Activations::kF32;
  MatMulOptions never_gemm = exact;
  never_gemm.gemm_min_tokens = 1 << 30;
  if (!testing::IsQuantized(type)) {
    return {{"small-n kernels", never_gemm}, {"default", exact}};
  }
  return {{"int8", int8_gemm},
          {"int8+sgemm", int8_sgemm},
          {"int8x2", int8x2},
          {"exact fused", never_gemm},
          {"exact+sgemm", exact}};
}

class MatMulGridTest : public ::testing::TestWithParam<DType> {};

TEST_P(MatMulGridTest, MatchesReferenceOnEveryShapeLevelAndMode) {
  const DType type = GetParam();
  uint32_t seed = 1;
  for (int cols : kCols) {
    // K-quants: 256, 768 and 1536 columns (whole 256-element blocks) in place of 32..576.
    if (GetDTypeInfo(type).block_elems == cpu::kSuperBlock) {
      if (cols < 96) continue;
      cols = cols == 96 ? 256 : (cols == 576 ? 768 : cols);
    }
    for (int rows : kRows) {
      for (int n : kTokens) {
        // Keep the grid's cost in check: the largest shapes only with a few batch sizes.
        if (static_cast<int64_t>(cols) * rows * n > 40'000'000) continue;
        const Case c = MakeCase(type, rows, cols, n, seed++);
        for (Isa isa : testing::SupportedIsas()) {
          for (const Mode& mode : Modes(type)) {
            SCOPED_TRACE(::testing::Message()
                         << GetDTypeInfo(type).name << " rows " << rows << " cols " << cols << " n "
                         << n << " isa " << cpu::IsaName(isa) << " mode " << mode.name);
            auto backend = testing::CpuBackendAt(isa, 2, mode.options);
            const std::vector<float> got = RunMatMul(*backend, c.w.tensor, c.x, n);
            // The scalar level has no int8 kernels: it always computes the exact product.
            const bool integer = testing::IsQuantized(type) &&
                                 mode.options.activations != cpu::Activations::kF32 &&
                                 isa != Isa::kScalar &&
                                 !(n >= mode.options.gemm_min_tokens &&
                                   mode.options.quant_gemm == QuantGemm::kSgemm);
            if (integer) {
              const bool two = mode.options.activations == cpu::Activations::kInt8x2;
              ExpectClose(got, two ? c.ref_q8x2 : c.ref_q8, c.ref_abs, 2e-6,
                          "vs integer-dot reference");
              std::vector<float> bound(c.bound);
              for (size_t i = 0; i < bound.size(); ++i) {
                // 1% over s_b / 256 for the fp32 rounding of x * 127 / max (steps <= 127).
                const float digits = two ? cpu::kSecondDigitBase / 2 / 1.01f : 1.0f;
                bound[i] = bound[i] / digits + 2e-6f * c.ref_abs[i];
              }
              ExpectClose(got, c.ref, bound, 1.0, "vs exact reference within the digits' bound");
            } else {
              ExpectClose(got, c.ref, c.ref_abs, 1e-5, "vs exact reference");
            }
          }
        }
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, MatMulGridTest, ::testing::ValuesIn(testing::AllDTypes()),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(GetDTypeInfo(info.param).name);
                         });

// The search compares hidden states across runs: the bits must not depend on the thread count.
TEST(MatMulTest, ResultsAreBitwiseIdenticalAtEveryThreadCount) {
  for (DType type : testing::AllDTypes()) {
    for (int n : {1, 3, 8, 16, 40}) {
      const int64_t cols = testing::ColsFor(type, 576);
      const OwnedTensor w = testing::RandomWeight(type, 577, cols, 7);
      const std::vector<float> x = testing::RandomFloats(n * cols, 8);
      for (Isa isa : testing::SupportedIsas()) {
        for (const Mode& mode : Modes(type)) {
          SCOPED_TRACE(::testing::Message() << GetDTypeInfo(type).name << " n " << n << " isa "
                                            << cpu::IsaName(isa) << " mode " << mode.name);
          std::vector<float> first;
          for (int threads : {1, 2, 3, 5}) {
            auto backend = testing::CpuBackendAt(isa, threads, mode.options);
            const std::vector<float> got = RunMatMul(*backend, w.tensor, x, n);
            if (first.empty()) {
              first = got;
            } else {
              ASSERT_EQ(0, std::memcmp(first.data(), got.data(), got.size() * sizeof(float)))
                  << "threads " << threads;
            }
          }
        }
      }
    }
  }
}

// MatMulSameInput (Q, K and V; gate and up) is one MatMul per weight, bit for bit, whether the
// weights share one quantized x (all packed: Q4_1 beside Q8_0 and Q6_K, as in a Q4_K_M file),
// go one by one (a dense weight among them, the sgemm tiles) or are one.
TEST(MatMulTest, SameInputWeightsGiveTheBitsOfOneMatMulEach) {
  const int64_t cols = 768;  // a multiple of every type's block
  const std::vector<std::vector<std::pair<DType, int>>> sets = {
      {{DType::kQ4_1, 576}, {DType::kQ8_0, 192}, {DType::kQ6_K, 200}},
      {{DType::kQ4_K, 1536}, {DType::kQ4_K, 1536}},
      {{DType::kQ5_0, 64}, {DType::kF32, 48}, {DType::kQ4_0, 33}},
      {{DType::kQ4_1, 96}}};
  uint32_t seed = 11;
  for (const auto& set : sets) {
    std::vector<OwnedTensor> w;
    for (const auto& [type, rows] : set)
      w.push_back(testing::RandomWeight(type, rows, cols, ++seed));
    for (int n : {1, 5, 16, 40, 130}) {
      const std::vector<float> x = testing::RandomFloats(n * cols, ++seed);
      for (Isa isa : testing::SupportedIsas()) {
        for (const Mode& mode : Modes(DType::kQ4_1)) {
          SCOPED_TRACE(::testing::Message()
                       << GetDTypeInfo(set[0].first).name << " x " << set.size() << " n " << n
                       << " isa " << cpu::IsaName(isa) << " mode " << mode.name);
          auto backend = testing::CpuBackendAt(isa, 3, mode.options);
          std::vector<std::unique_ptr<PreparedWeight>> prepared;
          std::vector<const PreparedWeight*> ws;
          std::vector<std::vector<float>> got;
          std::vector<float*> outs;
          for (const OwnedTensor& t : w) {
            auto pw = backend->Prepare(t.tensor);
            ASSERT_TRUE(pw.ok()) << pw.status();
            prepared.push_back(std::move(*pw));
            ws.push_back(prepared.back().get());
            got.emplace_back(size_t(n) * t.tensor.rows(), NAN);
          }
          for (auto& g : got) outs.push_back(g.data());
          backend->MatMulSameInput(ws, x.data(), n, outs);
          for (size_t i = 0; i < w.size(); ++i) {
            const std::vector<float> want = RunMatMul(*backend, w[i].tensor, x, n);
            ASSERT_EQ(0, std::memcmp(want.data(), got[i].data(), want.size() * sizeof(float)))
                << "weight " << i;
          }
        }
      }
    }
  }
}

// Logits (Backend::LogitsMatMul) take CpuBackendOptions::logits_activations, the other matmuls
// matmul.activations: the searches' backend (two digits, one for logits) gives, for the same
// weight, the bits of a backend with two digits through MatMul and those of a one-digit
// backend through LogitsMatMul; unset, LogitsMatMul is MatMul.
TEST(MatMulTest, LogitsTakeTheirOwnActivations) {
  const OwnedTensor w = testing::RandomWeight(DType::kQ8_0, 300, 576, 21);
  const int n = 40;
  const std::vector<float> x = testing::RandomFloats(n * 576, 22);
  auto run = [&](Backend& b, bool logits) {
    auto pw = b.Prepare(w.tensor);
    EXPECT_TRUE(pw.ok()) << pw.status();
    std::vector<float> out(size_t(n) * 300, NAN);
    if (logits) {
      b.LogitsMatMul(**pw, x.data(), n, out.data());
    } else {
      b.MatMul(**pw, x.data(), n, out.data());
    }
    return out;
  };
  CpuBackendOptions two, one, search;
  two.threads = one.threads = search.threads = 2;
  two.matmul.activations = search.matmul.activations = cpu::Activations::kInt8x2;
  one.matmul.activations = cpu::Activations::kInt8;
  search.logits_activations = cpu::Activations::kInt8;
  auto b_two = MakeCpuBackend(two), b_one = MakeCpuBackend(one), b_search = MakeCpuBackend(search);
  const std::vector<float> two_digits = run(*b_two, false), one_digit = run(*b_one, false);
  EXPECT_EQ(run(*b_search, false), two_digits);
  EXPECT_EQ(run(*b_search, true), one_digit);
  EXPECT_EQ(run(*b_two, true), two_digits);
  EXPECT_NE(one_digit, two_digits);  // the option is not a no-op on this weight
  EXPECT_NE(b_search->name().find("int8x2 activations, int8 for logits"), std::string::npos)
      << b_search->name();
}

// Token t's output does not depend on the other tokens of the batch while n stays on one side
// of gemm_min_tokens (the integer kernels are exact per token): batching does not change
// results.
TEST(MatMulTest, Int8ResultsDoNotDependOnBatchSize) {
  if (cpu::DetectIsa() == Isa::kScalar) GTEST_SKIP() << "no int8 kernels at the scalar level";
  for (DType type : {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1,
                     DType::kQ4_K, DType::kQ6_K}) {
    const int64_t cols = testing::ColsFor(type, 576);
    const OwnedTensor w = testing::RandomWeight(type, 192, cols, 3);
    const std::vector<float> x = testing::RandomFloats(64 * cols, 4);
    CpuBackendOptions options;
    options.threads = 2;
    options.matmul.activations = cpu::Activations::kInt8;
    auto backend = MakeCpuBackend(options);
    const std::vector<float> all = RunMatMul(*backend, w.tensor, x, 64);
    for (int t : {0, 5, 63}) {
      const std::vector<float> one(x.begin() + t * cols, x.begin() + (t + 1) * cols);
      const std::vector<float> got = RunMatMul(*backend, w.tensor, one, 1);
      EXPECT_EQ(0, std::memcmp(got.data(), &all[t * 192], 192 * sizeof(float)))
          << GetDTypeInfo(type).name << " token " << t;
    }
  }
}

// A repacking backend reports how far it has read the source (backend.h SourceProgress): in
// increasing steps of kProgressGroups groups, ending at the tensor's end; one reading its
// source in place reports nothing.
TEST(MatMulTest, RepackingReportsTheSourceReadSoFar) {
  auto backend = MakeCpuBackend(1);
  const int rows = 2 * cpu::kProgressGroups * cpu::kGroupRows + 5;  // two steps and a tail
  const OwnedTensor w = testing::RandomWeight(DType::kQ8_0, rows, 64, 7);
  std::vector<const uint8_t*> reports;
  auto p = backend->PrepareWeight(
      w.tensor, [&](const void* until) { reports.push_back(static_cast<const uint8_t*>(until)); });
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_FALSE((*p)->reads_source());
  const int64_t step = cpu::kProgressGroups * cpu::kGroupRows;
  ASSERT_EQ(reports.size(), 3u);
  EXPECT_EQ(reports[0], w.tensor.row_data(step));
  EXPECT_EQ(reports[1], w.tensor.row_data(2 * step));
  EXPECT_EQ(reports[2], static_cast<const uint8_t*>(w.tensor.data) + w.tensor.nbytes);

  const OwnedTensor f32 = testing::RandomWeight(DType::kF32, rows, 64, 8);
  reports.clear();
  p = backend->PrepareWeight(f32.tensor, [&](const void* until) {
    reports.push_back(static_cast<const uint8_t*>(until));
  });
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE((*p)->reads_source());
  EXPECT_TRUE(reports.empty());
}

TEST(MatMulTest, PrepareRejectsBadTensorsWithTheirName) {
  auto backend = MakeCpuBackend(1);
  Tensor t;
  t.name = "blk.0.attn_q.weight";
  t.type = DType::kQ4_1;
  t.shape = {48, 4};  // 48 is not a multiple of 32
  std::vector<uint8_t> bytes(1024);
  t.data = bytes.data();
  t.nbytes = bytes.size();
  auto p = backend->Prepare(t);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("blk.0.attn_q.weight"), std::string::npos);
  t.shape = {64, 100};  // needs 4000 bytes
  p = backend->Prepare(t);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("4000"), std::string::npos) << p.status();
}

}  // namespace
}  // namespace kvshare
