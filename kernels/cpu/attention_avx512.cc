// AVX-512 attention chunk. head_dim is handled in 16-lane pieces (HD16 of them, the last one
// masked, so any head_dim up to 128 has a specialization; larger ones take a generic loop).
//   scores: per row and 16 positions, 16 independent fma chains over head_dim, summed
//           horizontally together by a 4-level shuffle tree (Reduce16);
//   softmax: exp of the row's scores against its max, 16 at a time;
//   o:      per row, accumulators in registers, two sets (even / odd positions).
// Compact KV types are dequantised 16 lanes at a time first (kv_chunk.h).
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kv_chunk.h"
#include "kernels/cpu/vector_math.h"

// GCC 12 reports the _mm512_undefined_* pass-through inside AVX-512 intrinsics as an
// uninitialized read (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvshare::cpu::avx512 {
namespace {

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

template <int HD16>
KVSHARE_TARGET_AVX512 void AttendChunkT(const ChunkRows& a) {
  const KvGeometry& geo = *a.geometry;
  const int hd = geo.head_dim, len = a.p1 - a.p0;
  ChunkKv kv;
  GatherChunk(a, &kv);
  __mmask16 mask[HD16];
#pragma GCC unroll 8
  for (int c = 0; c < HD16; ++c) mask[c] = TailMask(hd - 16 * c);

  for (int r = 0; r < a.n_rows; ++r) {
    const int end = std::min(a.p1, a.limit[r] + 1);  // row r sees [p0, end)
    float* s = a.scores + static_cast<int64_t>(r) * len;
    __m512 q[HD16];
#pragma GCC unroll 8
    for (int c = 0; c < HD16; ++c) q[c] = _mm512_maskz_loadu_ps(mask[c], a.q[r] + 16 * c);
    // Scores, 16 positions at a time (positions past `end` read a valid row and are ignored).
    for (int p = a.p0; p < end; p += 16) {
      __m512 acc[16];
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) {
        const float* k = kv.k[std::min(p + j, end - 1) - a.p0];
        __m512 d = _mm512_mul_ps(q[0], _mm512_maskz_loadu_ps(mask[0], k));
#pragma GCC unroll 8
        for (int c = 1; c < HD16; ++c) {
          d = _mm512_fmadd_ps(q[c], _mm512_maskz_loadu_ps(mask[c], k + 16 * c), d);
        }
        acc[Slot(j)] = d;
      }
      _mm512_storeu_ps(s + (p - a.p0), _mm512_mul_ps(Reduce16(acc), _mm512_set1_ps(a.scale)));
    }
    // exp(score - max) over the row's positions, and their sum.
    const int n = end - a.p0;
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
    a.m[r] = max;
    a.l[r] = _mm512_reduce_add_ps(vsum);
    // o = sum_p e_p V_p, even and odd positions in separate accumulators.
    __m512 o0[HD16], o1[HD16];
#pragma GCC unroll 8
    for (int c = 0; c < HD16; ++c) o0[c] = o1[c] = _mm512_setzero_ps();
    int p = a.p0;
    for (; p + 1 < end; p += 2) {
      const float* v0 = kv.v[p - a.p0];
      const float* v1 = kv.v[p + 1 - a.p0];
      const __m512 e0 = _mm512_set1_ps(s[p - a.p0]), e1 = _mm512_set1_ps(s[p + 1 - a.p0]);
#pragma GCC unroll 8
      for (int c = 0; c < HD16; ++c) {
        o0[c] = _mm512_fmadd_ps(e0, _mm512_maskz_loadu_ps(mask[c], v0 + 16 * c), o0[c]);
        o1[c] = _mm512_fmadd_ps(e1, _mm512_maskz_loadu_ps(mask[c], v1 + 16 * c), o1[c]);
      }
    }
    if (p < end) {
      const float* v0 = kv.v[p - a.p0];
      const __m512 e0 = _mm512_set1_ps(s[p - a.p0]);
#pragma GCC unroll 8
      for (int c = 0; c < HD16; ++c) {
        o0[c] = _mm512_fmadd_ps(e0, _mm512_maskz_loadu_ps(mask[c], v0 + 16 * c), o0[c]);
      }
    }
    float* out = a.o + static_cast<int64_t>(r) * hd;
#pragma GCC unroll 8
    for (int c = 0; c < HD16; ++c) {
      _mm512_mask_storeu_ps(out + 16 * c, mask[c], _mm512_add_ps(o0[c], o1[c]));
    }
  }
}

}  // namespace

KVSHARE_TARGET_AVX512 void GatherChunk(const ChunkRows& a, ChunkKv* kv) {
  GatherChunkT<Avx512Half>(a, kv);
}

void AttendChunk(const ChunkRows& a) {
  switch ((a.geometry->head_dim + 15) / 16) {
    case 1:
      return AttendChunkT<1>(a);
    case 2:
      return AttendChunkT<2>(a);
    case 3:
      return AttendChunkT<3>(a);
    case 4:
      return AttendChunkT<4>(a);
    case 5:
      return AttendChunkT<5>(a);
    case 6:
      return AttendChunkT<6>(a);
    case 7:
      return AttendChunkT<7>(a);
    case 8:
      return AttendChunkT<8>(a);
    default:
      return scalar::AttendChunk(a);
  }
}

}  // namespace kvshare::cpu::avx512
