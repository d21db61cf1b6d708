// The pieces the AVX-512 attention kernels share (attention_avx512.cc: the gathered path;
// attention_avx512_int4.cc: int4 and int4a read in place). Internal to kernels/cpu.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>

#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/vector_math.h"

// GCC 12 reports the _mm512_undefined_* pass-through inside AVX-512 intrinsics as an
// uninitialized read (GCC bug 105593, fixed in GCC 13); this header's includers are the
// AVX-512 kernels, which need the same.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvshare::cpu::avx512 {

KVSHARE_TARGET_AVX512 inline __mmask16 TailMask(int remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xffff)
                         : static_cast<__mmask16>((1u << remaining) - 1);
}

// Lane j of the result = the sum of the 16 lanes of u[slot(j)], slot(j) = 4 (j % 4) + j / 4:
// the tree leaves lane 4i + k holding u[4k + i], so callers store position j at that slot.
constexpr int Slot(int j) { return 4 * (j % 4) + j / 4; }

KVSHARE_TARGET_AVX512 inline __m512 Reduce16(const __m512* u) {
  __m512 w[8], x[4], y[2];
  for (int k = 0; k < 8; ++k) {
    w[k] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0x44),
                         _mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0xee));
  }
  for (int k = 0; k < 4; ++k) {
    x[k] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * k], w[2 * k + 1], 0x88),
                         _mm512_shuffle_f32x4(w[2 * k], w[2 * k + 1], 0xdd));
  }
  for (int k = 0; k < 2; ++k) {
    y[k] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * k], x[2 * k + 1], 0x44),
                         _mm512_shuffle_ps(x[2 * k], x[2 * k + 1], 0xee));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], 0x88), _mm512_shuffle_ps(y[0], y[1], 0xdd));
}

// s[0, n) <- exp(s - max) (lanes up to the next multiple of 16 <- 0); *m = max, *l = the sum.
KVSHARE_TARGET_AVX512 inline void SoftmaxRow(float* s, int n, float* m, float* l) {
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  for (int i = 0; i < n; i += 16) {
    vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, TailMask(n - i), s + i));
  }
  const float max = _mm512_reduce_max_ps(vmax);
  const __m512 vm = _mm512_set1_ps(max);
  __m512 vsum = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) {
    const __mmask16 k = TailMask(n - i);
    const __m512 e = _mm512_maskz_mov_ps(k, Exp512(_mm512_sub_ps(_mm512_loadu_ps(s + i), vm)));
    _mm512_storeu_ps(s + i, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  *m = max;
  *l = _mm512_reduce_add_ps(vsum);
}

struct Avx512Half {
  KVSHARE_TARGET_AVX512 static void Convert(const uint16_t* src, int n, float* dst) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
      _mm512_storeu_ps(
          dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
    }
    for (; i < n; ++i) dst[i] = Fp16ToFp32(src[i]);
  }
};

// The nibbles of one 32-channel group (16 bytes): lo = channels 0..15, hi = channels 16..31.
KVSHARE_TARGET_AVX512 inline void Unpack32(const uint8_t* bytes, __m512* lo, __m512* hi) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
  *lo = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
  *hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
}

KVSHARE_TARGET_AVX512 inline __m512 LoadHalf16(const uint16_t* src) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
}

// int4 and int4a pools read in place (attention_avx512_int4.cc), for the head sizes those
// kernels specialise (head_dim 32, 64, 96, 128) when a.int4_in_place; false (nothing done)
// otherwise, and the caller gathers.
bool AttendChunkInPlace(const ChunkRows& a);

}  // namespace kvshare::cpu::avx512
