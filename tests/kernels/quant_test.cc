// Number formats: fp16/bf16 conversions, dequantization of hand-built blocks, the packed
// (repacked) layout, and the SIMD activation quantizers against the reference.
#include "kernels/cpu/quant.h"

#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/matmul_kernels.h"
#include "kernels/cpu/packed_weight.h"
#include "tests/kernels/kernel_test_util.h"

namespace kvshare::cpu {
namespace {

TEST(HalfTest, KnownFp16Values) {
  EXPECT_EQ(Fp16ToFp32(0x3c00), 1.0f);
  EXPECT_EQ(Fp16ToFp32(0xc000), -2.0f);
  EXPECT_EQ(Fp16ToFp32(0x7bff), 65504.0f);
  EXPECT_EQ(Fp16ToFp32(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(Fp16ToFp32(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_TRUE(std::isinf(Fp16ToFp32(0x7c00)));
  EXPECT_TRUE(std::isnan(Fp16ToFp32(0x7e00)));
  EXPECT_EQ(Fp32ToFp16(1.0f), 0x3c00);
  EXPECT_EQ(Fp32ToFp16(65520.0f), 0x7c00);  // rounds up to inf
  EXPECT_EQ(Fp32ToFp16(65519.0f), 0x7bff);
  EXPECT_EQ(Fp32ToFp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even
  EXPECT_EQ(Fp32ToFp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even (up)
  EXPECT_EQ(Fp32ToFp16(std::ldexp(1.0f, -25)), 0x0000);  // half the smallest subnormal: tie
  EXPECT_EQ(Fp32ToFp16(std::ldexp(1.5f, -25)), 0x0001);
}

TEST(HalfTest, EveryFp16RoundTripsThroughFp32) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = Fp16ToFp32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(Fp32ToFp16(f), h) << std::hex << h;
  }
}

__attribute__((target("f16c"))) uint16_t HardwareFp16(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
__attribute__((target("f16c"))) float HardwareFp32(uint16_t h) { return _cvtsh_ss(h); }

TEST(HalfTest, MatchesF16cOnRandomFloats) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C";
  std::mt19937 rng(1);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = bits(rng);
    // Bias towards the fp16 range (exponents near 0) as well as any bit pattern.
    if (i % 2) u = (u & 0x807fffff) | ((100 + (u >> 23) % 50) << 23);
    const float f = BitsFloat(u);
    if (std::isnan(f)) continue;
    ASSERT_EQ(Fp32ToFp16(f), HardwareFp16(f)) << std::hexfloat << f;
  }
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float a = Fp16ToFp32(static_cast<uint16_t>(h)),
                b = HardwareFp32(static_cast<uint16_t>(h));
    if (std::isnan(a)) {
      ASSERT_TRUE(std::isnan(b));
    } else {
      ASSERT_EQ(FloatBits(a), FloatBits(b)) << std::hex << h;
    }
  }
}

TEST(HalfTest, Bf16RoundsToNearestEven) {
  EXPECT_EQ(Bf16ToFp32(0x3f80), 1.0f);
  EXPECT_EQ(Fp32ToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Fp32ToBf16(BitsFloat(0x3f808000)), 0x3f80);  // tie -> even
  EXPECT_EQ(Fp32ToBf16(BitsFloat(0x3f818000)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(Fp32ToBf16(BitsFloat(0x3f808001)), 0x3f81);
}

TEST(DequantizeTest, HandBuiltQ8_0Block) {
  BlockQ8_0 b;
  b.d = Fp32ToFp16(0.5f);
  for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<int8_t>(j - 16);
  b.qs[0] = -128;
  b.qs[31] = 127;
  float out[32];
  DequantizeRow(DType::kQ8_0, &b, 32, out);
  EXPECT_EQ(out[0], -64.0f);
  EXPECT_EQ(out[1], -7.5f);
  EXPECT_EQ(out[16], 0.0f);
  EXPECT_EQ(out[17], 0.5f);
  EXPECT_EQ(out[31], 63.5f);
}

TEST(DequantizeTest, HandBuiltQ4_0Block) {
  BlockQ4_0 b;
  b.d = Fp32ToFp16(0.25f);
  // byte j: low nibble = element j, high nibble = element j + 16
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  float out[32];
  DequantizeRow(DType::kQ4_0, &b, 32, out);
  EXPECT_EQ(out[0], 0.25f * (0 - 8));
  EXPECT_EQ(out[15], 0.25f * (15 - 8));
  EXPECT_EQ(out[16], 0.25f * (15 - 8));
  EXPECT_EQ(out[31], 0.25f * (0 - 8));
  EXPECT_EQ(out[8], 0.0f);
}

TEST(DequantizeTest, HandBuiltQ4_1Block) {
  BlockQ4_1 b;
  b.d = Fp32ToFp16(0.125f);
  b.m = Fp32ToFp16(-1.0f);
  for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>((j % 16) | (3 << 4));
  float out[32];
  DequantizeRow(DType::kQ4_1, &b, 32, out);
  EXPECT_EQ(out[0], -1.0f);
  EXPECT_EQ(out[8], 0.0f);
  EXPECT_EQ(out[15], 0.875f);
  EXPECT_EQ(out[16], -0.625f);
  EXPECT_EQ(out[31], -0.625f);
}

TEST(DequantizeTest, QuantizeRowRoundTripsWithinHalfAStep) {
  const std::vector<float> x = testing::RandomFloats(32 * 20, 5);
  for (DType type : testing::AllDTypes()) {
    if (GetDTypeInfo(type).block_elems == kSuperBlock) continue;  // no K-quant quantizer
    std::vector<uint8_t> bytes(StorageBytes(type, x.size()));
    QuantizeRow(type, x.data(), x.size(), bytes.data());
    std::vector<float> y(x.size());
    DequantizeRow(type, bytes.data(), x.size(), y.data());
    for (size_t b = 0; b < x.size() / 32; ++b) {
      float lo = x[b * 32], hi = x[b * 32], amax = 0;
      for (int j = 0; j < 32; ++j) {
        lo = std::fmin(lo, x[b * 32 + j]);
        hi = std::fmax(hi, x[b * 32 + j]);
        amax = std::fmax(amax, std::fabs(x[b * 32 + j]));
      }
      float step = 0;  // max error allowed for the element
      switch (type) {
        case DType::kQ8_0:
          step = amax / 127 * 0.5f + amax * 1e-3f;
          break;            // + fp16 scale rounding
        case DType::kQ4_0:  // levels -8..7 (x d): the extreme opposite to max clamps by a step
          step = amax / 8 + amax * 1e-2f;
          break;
        case DType::kQ4_1:
          step = (hi - lo) / 15 * 0.5f + amax * 1e-2f;
          break;
        case DType::kQ5_0:  // levels -16..15, as Q4_0
          step = amax / 16 + amax * 1e-2f;
          break;
        case DType::kQ5_1:
          step = (hi - lo) / 31 * 0.5f + amax * 1e-2f;
          break;
        case DType::kQ3_K:
        case DType::kQ4_K:
        case DType::kQ5_K:
        case DType::kQ6_K:
          break;
        case DType::kF16:
          step = amax * 1e-3f;
          break;
        case DType::kBF16:
          step = amax * 1e-2f;
          break;
        case DType::kF32:
          step = 0;
          break;
      }
      for (int j = 0; j < 32; ++j) {
        ASSERT_LE(std::fabs(y[b * 32 + j] - x[b * 32 + j]), step)
            << GetDTypeInfo(type).name << " block " << b << " element " << j;
      }
    }
  }
}

// The repacked layout must hold exactly the GGUF values: every row dequantizes to the same bits.
TEST(PackedWeightTest, EveryRowDequantizesLikeTheGgufRow) {
  for (DType type : testing::AllDTypes()) {
    for (int rows : {1, 15, 16, 17, 50}) {
      for (int64_t cols :
           {testing::ColsFor(type, 32), testing::ColsFor(type, 96), testing::ColsFor(type, 576)}) {
        const testing::OwnedTensor w = testing::RandomWeight(type, rows, cols, rows * cols);
        auto packed = CpuWeight::Create(w.tensor, /*repack=*/true);
        ASSERT_TRUE(packed.ok()) << packed.status();
        EXPECT_EQ((*packed)->packed(), testing::IsQuantized(type));
        std::vector<float> want(cols), got(cols);
        for (int r = 0; r < rows; ++r) {
          DequantizeRow(type, w.tensor.row_data(r), cols, want.data());
          (*packed)->DequantizeRow(r, got.data());
          ASSERT_EQ(0, std::memcmp(want.data(), got.data(), cols * sizeof(float)))
              << GetDTypeInfo(type).name << " rows " << rows << " cols " << cols << " row " << r;
        }
        if ((*packed)->packed()) {
          // Padding rows of the last group are zero.
          std::vector<float> group(16 * cols);
          (*packed)->DequantizeGroup((*packed)->n_groups() - 1, group.data());
          for (int r = rows % 16 == 0 ? 16 : rows % 16; r < 16; ++r) {
            for (int c = 0; c < cols; ++c) ASSERT_EQ(group[r * cols + c], 0.0f);
          }
        }
      }
    }
  }
}

TEST(QuantizeActivationsTest, SimdMatchesReferenceBitForBit) {
  const int64_t cols = 1536, nb = cols / 32;
  std::vector<float> x = testing::RandomFloats(cols, 11, 3.0f);
  for (int j = 0; j < 32; ++j) x[64 + j] = 0.0f;  // an all-zero block
  x[100] = 1e-30f;                                // a tiny block maximum elsewhere
  for (int j = 0; j < 32; ++j) x[128 + j] = (j % 2 ? 1 : -1) * 0.5f * (j + 1);  // exact ties
  for (bool two_digits : {false, true}) {
    std::vector<int8_t> q_ref(cols), q(cols), q2_ref(cols), q2(cols);
    std::vector<float> s_ref(nb), s(nb), sum_ref(nb), sum(nb);
    std::vector<int32_t> qs_ref(nb), qs(nb), q2s_ref(nb), q2s(nb);
    auto out = [&](int8_t* q, float* s, float* sum, int32_t* qs, int8_t* q2, int32_t* q2s) {
      return QuantizedActivations{q, s, sum, qs, two_digits ? q2 : nullptr, q2s};
    };
    QuantizeActivationsRef(x.data(), cols,
                           out(q_ref.data(), s_ref.data(), sum_ref.data(), qs_ref.data(),
                               q2_ref.data(), q2s_ref.data()));
    auto check = [&](const char* level) {
      SCOPED_TRACE(::testing::Message() << level << (two_digits ? " two digits" : ""));
      EXPECT_EQ(0, std::memcmp(q.data(), q_ref.data(), cols));
      EXPECT_EQ(0, std::memcmp(s.data(), s_ref.data(), nb * 4));
      EXPECT_EQ(0, std::memcmp(sum.data(), sum_ref.data(), nb * 4));
      EXPECT_EQ(qs, qs_ref);
      EXPECT_EQ(0, std::memcmp(q2.data(), q2_ref.data(), cols));
      EXPECT_EQ(q2s, q2s_ref);
    };
    const auto simd = out(q.data(), s.data(), sum.data(), qs.data(), q2.data(), q2s.data());
    if (DetectIsa() >= Isa::kAvx2) {
      avx2::QuantizeActivations(x.data(), cols, simd);
      check("avx2");
    }
    if (DetectIsa() >= Isa::kAvx512) {
      avx512::QuantizeActivations(x.data(), cols, simd);
      check("avx512");
    }
  }
}

// Two digits hold each x to max|x_b| / 65024 of its block's largest magnitude (half a step of
// 1/256 of an int8 step), and to max / 32512 where the second digit was clamped to +-127 (what
// rounding left was within 1/512 of half a step), where one digit holds it to max / 254;
// computed here in double from the stored digits alone.
TEST(QuantizeActivationsTest, TwoDigitsHoldEachValueWithinMaxOver65024) {
  const int64_t cols = 4096, nb = cols / 32;
  const std::vector<float> x = testing::RandomFloats(cols, 5, 10.0f);
  std::vector<int8_t> q(cols), q2(cols);
  std::vector<float> s(nb), sum(nb);
  std::vector<int32_t> qs(nb), q2s(nb);
  QuantizeActivationsRef(x.data(), cols,
                         {q.data(), s.data(), sum.data(), qs.data(), q2.data(), q2s.data()});
  double worst = 0, worst_clamped = 0;  // the largest errors over the block's max, times the bound
  int clamped = 0;
  for (int64_t b = 0; b < nb; ++b) {
    double amax = 0;
    int32_t q2_sum = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(double(x[b * 32 + j])));
    for (int j = 0; j < 32; ++j) {
      const int64_t c = b * 32 + j;
      ASSERT_GE(q2[c], -127);
      ASSERT_LE(q2[c], 127);
      q2_sum += q2[c];
      const double error = std::fabs(double(s[b]) * (q[c] + q2[c] / 256.0) - x[c]) / amax;
      // What rounding to q left, in 1/256 steps, from x alone: past 127.5 the digit is clamped.
      const double left = (x[c] / double(s[b]) - q[c]) * 256.0;
      if (std::fabs(left) > 127.5 + 1e-3) {
        EXPECT_EQ(q2[c], left > 0 ? 127 : -127) << c;
        ++clamped;
        worst_clamped = std::max(worst_clamped, error * 32512.0);
      } else {
        worst = std::max(worst, error * 65024.0);
      }
    }
    EXPECT_EQ(q2s[b], q2_sum);
  }
  // On top of the half step: the fp32 roundings of 127 / max, x * 127 / max (half an ulp of up
  // to 127 steps) and max / 127, each under 0.004 of the bound.
  EXPECT_LE(worst, 1.01);
  EXPECT_GT(worst, 0.5);  // the bound is tight: some value sits near half a step away
  EXPECT_LE(worst_clamped, 1.01);
  EXPECT_GT(clamped, 0);  // ~1% of uniform remainders land within 1/512 of half a step
}

}  // namespace
}  // namespace kvshare::cpu
