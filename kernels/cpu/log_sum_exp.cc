#include "kernels/cpu/log_sum_exp.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vector_math.h"

// GCC 12 reports the _mm512_undefined_* pass-through inside AVX-512 intrinsics as an
// uninitialized read (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvshare::cpu {
namespace {

double LogSumExpScalar(const float* x, int64_t n) {
  const float m = *std::max_element(x, x + n);
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(double(x[i]) - m);
  return m + std::log(s);
}

KVSHARE_TARGET_AVX512 double LogSumExpAvx512(const float* x, int64_t n) {
  __m512 mv = _mm512_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(x + i));
  float m = _mm512_reduce_max_ps(mv);
  for (int64_t j = i; j < n; ++j) m = std::max(m, x[j]);
  const __m512 mm = _mm512_set1_ps(m);
  // Two double accumulators per 16 lanes (the low and high 8), so a row of 49,152 terms keeps
  // fp32 exp's error and adds no summation error of its own.
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 e = Exp512(_mm512_sub_ps(_mm512_loadu_ps(x + i), mm));
    lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
  }
  double s = _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
  for (; i < n; ++i) s += std::exp(double(x[i]) - m);
  return m + std::log(s);
}

KVSHARE_TARGET_AVX2 double LogSumExpAvx2(const float* x, int64_t n) {
  __m256 mv = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(mv, _mm256_loadu_ps(x + i));
  float lanes[8];
  _mm256_storeu_ps(lanes, mv);
  float m = *std::max_element(lanes, lanes + 8);
  for (int64_t j = i; j < n; ++j) m = std::max(m, x[j]);
  const __m256 mm = _mm256_set1_ps(m);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  for (i = 0; i + 8 <= n; i += 8) {
    const __m256 e = Exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), mm));
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  double sums[4];
  _mm256_storeu_pd(sums, _mm256_add_pd(lo, hi));
  double s = (sums[0] + sums[1]) + (sums[2] + sums[3]);
  for (; i < n; ++i) s += std::exp(double(x[i]) - m);
  return m + std::log(s);
}

}  // namespace

double LogSumExp(Isa isa, const float* x, int64_t n) {
  switch (isa) {
    case Isa::kAvx512:
      return LogSumExpAvx512(x, n);
    case Isa::kAvx2:
      return LogSumExpAvx2(x, n);
    case Isa::kScalar:
      break;
  }
  return LogSumExpScalar(x, n);
}

}  // namespace kvshare::cpu
