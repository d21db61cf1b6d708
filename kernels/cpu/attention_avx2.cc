// AVX2 attention chunk: per row, 8-lane dot products with a horizontal sum per score, and o
// accumulated in a stack buffer with full-width loads and stores (head_dim % 8 == 0), or the
// scalar kernel otherwise. Compact KV types are dequantised with F16C (kv_chunk.h).
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
    a.m[r] = max;
    a.l[r] = sum;
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

}  // namespace

KVSHARE_TARGET_AVX2 void GatherChunk(const ChunkRows& a, ChunkKv* kv) {
  GatherChunkT<Avx2Half>(a, kv);
}

void AttendChunk(const ChunkRows& a) {
  if (a.geometry->head_dim % 8 == 0) {
    AttendChunk8(a);
  } else {
    scalar::AttendChunk(a);
  }
}

}  // namespace kvshare::cpu::avx2
