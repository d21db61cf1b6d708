// AVX-512 attention chunk. head_dim is handled in 16-lane pieces (HD16 of them, the last one
// masked, so any head_dim up to 128 has a specialization; larger ones take a generic loop).
//   scores: per row and 16 positions, 16 independent fma chains over head_dim, summed
//           horizontally together by a 4-level shuffle tree (Reduce16);
//   softmax: exp of the row's scores against its max, 16 at a time;
//   o:      per row, accumulators in registers, two sets (even / odd positions).
// f16 and int8 pools are dequantised 16 lanes at a time first (kv_chunk.h); int4 and int4a
// pools are read in place with the scales folded into the query and the softmax weights
// (attention_avx512_int4.cc).
#include <algorithm>

#include "kernels/cpu/attention_avx512_common.h"
#include "kernels/cpu/kv_chunk.h"

namespace kvshare::cpu::avx512 {
namespace {

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
    SoftmaxRow(s, end - a.p0, &a.m[r], &a.l[r]);
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
  if (AttendChunkInPlace(a)) return;  // int4, int4a: attention_avx512_int4.cc
  // Up to 8 x 16 channels the row's q and o stay in registers; wider heads (up to 256, Gemma
  // 3) spill some of them to the stack, still far ahead of the scalar loop.
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
    case 9:
      return AttendChunkT<9>(a);
    case 10:
      return AttendChunkT<10>(a);
    case 11:
      return AttendChunkT<11>(a);
    case 12:
      return AttendChunkT<12>(a);
    case 13:
      return AttendChunkT<13>(a);
    case 14:
      return AttendChunkT<14>(a);
    case 15:
      return AttendChunkT<15>(a);
    case 16:
      return AttendChunkT<16>(a);
    default:
      return scalar::AttendChunk(a);
  }
}

}  // namespace kvshare::cpu::avx512
