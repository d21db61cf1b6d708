// AVX2 attention chunk: per row, 8-lane dot products with a horizontal sum per score, and o
// accumulated in a stack buffer with full-width loads and stores (head_dim % 8 == 0), or the
// scalar kernel otherwise. f16 and int8 pools are dequantised with F16C first (kv_chunk.h); int4
// and int4a pools are read in place with the scales folded into the query and the softmax
// weights (AttendChunkInt4).
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/attention_kernels.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kv_chunk.h"
#include "kernels/cpu/vector_math.h"

namespace kvshare::cpu::avx2 {
namespace {

KVSHARE_TARGET_AVX2 inline float HorizontalSum(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

// s[0, n) <- exp(s - max); *m = max, *l = the sum.
KVSHARE_TARGET_AVX2 inline void SoftmaxRow(float* s, int n, float* m, float* l) {
  float max = -INFINITY;
  for (int i = 0; i < n; ++i) max = std::fmax(max, s[i]);
  const __m256 vm = _mm256_set1_ps(max);
  __m256 vsum = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = Exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), vm));
    _mm256_storeu_ps(s + i, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = HorizontalSum(vsum);
  for (; i < n; ++i) {
    s[i] = std::exp(s[i] - max);
    sum += s[i];
  }
  *m = max;
  *l = sum;
}

struct Avx2Half {
  KVSHARE_TARGET_AVX2 static void Convert(const uint16_t* src, int n, float* dst) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      _mm256_storeu_ps(dst + i,
                       _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    }
    for (; i < n; ++i) dst[i] = Fp16ToFp32(src[i]);
  }
};

KVSHARE_TARGET_AVX2 void AttendChunk8(const ChunkRows& a) {
  const KvGeometry& geo = *a.geometry;
  const int hd = geo.head_dim, len = a.p1 - a.p0;
  ChunkKv kv;
  GatherChunk(a, &kv);
  for (int r = 0; r < a.n_rows; ++r) {
    const int end = std::min(a.p1, a.limit[r] + 1);
    const int n = end - a.p0;
    float* s = a.scores + static_cast<int64_t>(r) * len;
    const float* q = a.q[r];
    for (int p = a.p0; p < end; ++p) {
      const float* k = kv.k[p - a.p0];
      __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(k));
      for (int i = 8; i < hd; i += 8) {
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(k + i), acc);
      }
      s[p - a.p0] = HorizontalSum(acc) * a.scale;
    }
    SoftmaxRow(s, n, &a.m[r], &a.l[r]);
    float* out = a.o + static_cast<int64_t>(r) * hd;
    for (int c = 0; c < hd; c += 8) {
      __m256 acc = _mm256_setzero_ps();
      for (int p = a.p0; p < end; ++p) {
        const float* v = kv.v[p - a.p0];
        acc = _mm256_fmadd_ps(_mm256_set1_ps(s[p - a.p0]), _mm256_loadu_ps(v + c), acc);
      }
      _mm256_storeu_ps(out + c, acc);
    }
  }
}

KVSHARE_TARGET_AVX2 inline __m256 LoadHalf8(const uint16_t* src) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
}

// The nibbles of 8 bytes: lo = their low nibbles, hi = their high ones, as floats.
KVSHARE_TARGET_AVX2 inline void Unpack8(const uint8_t* bytes, __m256* lo, __m256* hi) {
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes)));
  *lo = _mm256_cvtepi32_ps(_mm256_and_si256(b, _mm256_set1_epi32(15)));
  *hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
}

// Widest head the int4 path keeps its scaled query for on the stack.
constexpr int kMaxInt4HeadDim = 256;

// int4a's K codes of a quantised run (kernels/kv_type.h), channel-major into u: u[j * stride +
// i0 + t] = channel j's code at the run's position t, 8 positions at a time — each plane's byte
// spread to 8 byte lanes (kSpreadBits), shifted to its bit, the 8 codes widened to floats. The
// last 8 may spill up to 7 columns past the run (codes of the bits after it, finite), which the
// next run's build or nobody reads.
KVSHARE_TARGET_AVX2 void UnpackAllocatedK(const KvGeometry& geo, const Int4Run& run, int64_t head,
                                          int stride, float* u) {
  const int hd = geo.head_dim, plane_bytes = geo.block_tokens / 8;
  const KvBlockLayout lay(geo);
  const uint8_t* widths = run.block + lay.k_bits;
  const uint8_t* plane = AllocatedKPlanes(geo, lay, run.block, head);
  const int shift = run.row0 % 8;
  for (int j = 0; j < hd; ++j) {
    const int64_t ch = head + j;
    const int b = AllocatedKWidth(widths, ch);
    float* dst = u + static_cast<int64_t>(j) * stride + run.i0;
    for (int t0 = 0; t0 < run.n; t0 += 8) {
      // Bits row0 + t0 ... + 7 of each plane: from its byte, and the next one when they do not
      // start a byte (inside the block: V follows the last plane).
      const uint8_t* at = plane + (run.row0 + t0) / 8;
      uint64_t codes = 0;
      for (int k = 0; k < b; ++k) {
        const uint8_t* p = at + k * plane_bytes;
        const unsigned bits = shift == 0 ? p[0] : ((p[0] >> shift) | (p[1] << (8 - shift))) & 255;
        codes |= kSpreadBits.of[bits] << k;
      }
      const __m128i bytes = _mm_cvtsi64_si128(static_cast<long long>(codes));
      _mm256_storeu_ps(dst + t0, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)));
    }
    plane += b * plane_bytes;
  }
}

// int4 pools, read in place run by run (kv_chunk.h Int4Runs) with the scales folded as in
// attention_avx512_int4.cc AttendChunkInt4T: q.k = sum_c (q_c s_c) u_c + sum_c q_c m_c per
// quantised block, and sum_p e_p v_pc = sum_p (e_p s_pg) u_pc + sum_p e_p m_pg per 32-channel group
// g. The 16 bytes of a group unpack as channels 0-7 (low nibbles of bytes 0-7), 16-23 (their high
// nibbles), 8-15 and 24-31 (bytes 8-15); o is accumulated group by group.
// int4a pools (the same V) first build every quantised run's K codes once for all rows
// (UnpackAllocatedK, into the call's scratch); a row's scores over such a run are then one fma
// per channel per 8 positions against the broadcast q_c s_c, with no horizontal sums.
KVSHARE_TARGET_AVX2 void AttendChunkInt4(const ChunkRows& a) {
  const KvGeometry& geo = *a.geometry;
  const int hd = geo.head_dim, len = a.p1 - a.p0, groups = hd / kKvInt4Group;
  const int64_t c = geo.kv_dim(), head = static_cast<int64_t>(a.kv_head) * hd;
  const int64_t v_groups = c / kKvInt4Group, head_group = head / kKvInt4Group;
  const KvBlockLayout lay(geo);
  Int4Run runs[kMaxInt4Runs];
  const int n_runs = Int4Runs(a, runs);
  alignas(32) float qs[kMaxInt4HeadDim];
  // Lane offsets, within a group, of the four 8-channel pieces in unpack order.
  constexpr int kPiece[4] = {0, 16, 8, 24};
  const bool allocated = geo.type == KvType::kInt4A;
  const int u_stride = len + 8;  // chunk positions and the last run's spill
  float* u = a.kv_scratch;       // int4a: [hd][u_stride], hd * (kMaxChunk + 8) floats at most
  for (int ri = 0; allocated && ri < n_runs; ++ri) {
    if (runs[ri].block != nullptr) UnpackAllocatedK(geo, runs[ri], head, u_stride, u);
  }

  for (int r = 0; r < a.n_rows; ++r) {
    const int n_pos = std::min(a.p1, a.limit[r] + 1) - a.p0;  // row r sees [0, n_pos)
    float* s = a.scores + static_cast<int64_t>(r) * len;
    const float* q = a.q[r];
    for (int ri = 0; ri < n_runs && runs[ri].i0 < n_pos; ++ri) {
      const Int4Run& run = runs[ri];
      const int n = std::min(run.n, n_pos - run.i0);
      if (run.block == nullptr) {
        for (int j = 0; j < n; ++j) {
          const uint16_t* k = run.f16_k + (run.row0 + j) * c;
          __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(q), LoadHalf8(k));
          for (int i = 8; i < hd; i += 8) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), LoadHalf8(k + i), acc);
          }
          s[run.i0 + j] = HorizontalSum(acc) * a.scale;
        }
        continue;
      }
      const auto* k_scale = reinterpret_cast<const uint16_t*>(run.block + lay.k_scale) + head;
      const auto* k_min = reinterpret_cast<const uint16_t*>(run.block + lay.k_min) + head;
      __m256 qm = _mm256_setzero_ps();
      for (int i = 0; i < hd; i += 8) {
        const __m256 qi = _mm256_loadu_ps(q + i);
        _mm256_store_ps(qs + i, _mm256_mul_ps(qi, LoadHalf8(k_scale + i)));
        qm = _mm256_fmadd_ps(qi, LoadHalf8(k_min + i), qm);
      }
      const float bias = HorizontalSum(qm);
      if (allocated) {
        const __m256 vbias = _mm256_set1_ps(bias), scale = _mm256_set1_ps(a.scale);
        for (int t0 = 0; t0 < n; t0 += 8) {
          const float* col = u + run.i0 + t0;
          __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
          for (int j = 0; j < hd; j += 2) {
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(qs[j]),
                                   _mm256_loadu_ps(col + static_cast<int64_t>(j) * u_stride), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(qs[j + 1]),
                                   _mm256_loadu_ps(col + static_cast<int64_t>(j + 1) * u_stride),
                                   acc1);
          }
          const __m256 d = _mm256_mul_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), vbias), scale);
          // Past n: the next run's or row's scores, written after this (the scores scratch has
          // 16 floats of slack past the last row).
          _mm256_storeu_ps(s + run.i0 + t0, d);
        }
        continue;
      }
      const uint8_t* k_rows = run.block + lay.k + head / 2;
      for (int j = 0; j < n; ++j) {
        const uint8_t* k = k_rows + (run.row0 + j) * c / 2;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        for (int g = 0; g < groups; ++g) {
          const float* qg = qs + g * kKvInt4Group;
          const uint8_t* kg = k + g * (kKvInt4Group / 2);
          __m256 lo, hi;
          Unpack8(kg, &lo, &hi);
          acc0 = _mm256_fmadd_ps(_mm256_load_ps(qg + kPiece[0]), lo, acc0);
          acc1 = _mm256_fmadd_ps(_mm256_load_ps(qg + kPiece[1]), hi, acc1);
          Unpack8(kg + 8, &lo, &hi);
          acc0 = _mm256_fmadd_ps(_mm256_load_ps(qg + kPiece[2]), lo, acc0);
          acc1 = _mm256_fmadd_ps(_mm256_load_ps(qg + kPiece[3]), hi, acc1);
        }
        s[run.i0 + j] = (HorizontalSum(_mm256_add_ps(acc0, acc1)) + bias) * a.scale;
      }
    }
    SoftmaxRow(s, n_pos, &a.m[r], &a.l[r]);
    float* out = a.o + static_cast<int64_t>(r) * hd;
    for (int g = 0; g < groups; ++g) {
      __m256 o[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
      float vb = 0.0f;  // sum_p e_p m_pg
      for (int ri = 0; ri < n_runs && runs[ri].i0 < n_pos; ++ri) {
        const Int4Run& run = runs[ri];
        const int n = std::min(run.n, n_pos - run.i0);
        const float* e = s + run.i0;
        if (run.block == nullptr) {
          for (int j = 0; j < n; ++j) {
            const uint16_t* v = run.f16_v + (run.row0 + j) * c + g * kKvInt4Group;
            const __m256 w = _mm256_set1_ps(e[j]);
            for (int piece = 0; piece < 4; ++piece) {
              o[piece] = _mm256_fmadd_ps(w, LoadHalf8(v + kPiece[piece]), o[piece]);
            }
          }
          continue;
        }
        const auto* v_scale =
            reinterpret_cast<const uint16_t*>(run.block + lay.v_scale) + head_group + g;
        const auto* v_min =
            reinterpret_cast<const uint16_t*>(run.block + lay.v_min) + head_group + g;
        const uint8_t* v_rows = run.block + lay.v + head / 2 + g * (kKvInt4Group / 2);
        for (int j = 0; j < n; ++j) {
          const int64_t row = run.row0 + j;
          const __m256 w = _mm256_set1_ps(e[j] * _cvtsh_ss(v_scale[row * v_groups]));
          vb += e[j] * _cvtsh_ss(v_min[row * v_groups]);
          const uint8_t* v = v_rows + row * c / 2;
          __m256 lo, hi;
          Unpack8(v, &lo, &hi);
          o[0] = _mm256_fmadd_ps(w, lo, o[0]);
          o[1] = _mm256_fmadd_ps(w, hi, o[1]);
          Unpack8(v + 8, &lo, &hi);
          o[2] = _mm256_fmadd_ps(w, lo, o[2]);
          o[3] = _mm256_fmadd_ps(w, hi, o[3]);
        }
      }
      const __m256 bias = _mm256_set1_ps(vb);
      for (int piece = 0; piece < 4; ++piece) {
        _mm256_storeu_ps(out + g * kKvInt4Group + kPiece[piece], _mm256_add_ps(o[piece], bias));
      }
    }
  }
}

}  // namespace

KVSHARE_TARGET_AVX2 void GatherChunk(const ChunkRows& a, ChunkKv* kv) {
  GatherChunkT<Avx2Half>(a, kv);
}

void AttendChunk(const ChunkRows& a) {
  const KvType type = a.geometry->type;
  if ((type == KvType::kInt4 || type == KvType::kInt4A) && a.int4_in_place &&
      a.geometry->head_dim <= kMaxInt4HeadDim) {
    AttendChunkInt4(a);  // head_dim % 32 == 0 (ValidateKvGeometry)
  } else if (a.geometry->head_dim % 8 == 0) {
    AttendChunk8(a);
  } else {
    scalar::AttendChunk(a);
  }
}

}  // namespace kvshare::cpu::avx2
