#include "kernels/cpu/elementwise.h"

#include <immintrin.h>

#include <cmath>

#include "kernels/cpu/vector_math.h"

// GCC 12 reports the _mm512_undefined_* pass-through inside AVX-512 intrinsics as an
// uninitialized read (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvshare::cpu {
namespace {

KVSHARE_TARGET_AVX512 void RmsNormAvx512(const float* x, const float* weight, int dim, float eps,
                                         float* out) {
  __m512 acc = _mm512_setzero_ps();
  for (int i = 0; i < dim; i += 16) {
    const __mmask16 k = dim - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (dim - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(k, x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const float inv = 1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / dim + eps);
  const __m512 vi = _mm512_set1_ps(inv);
  for (int i = 0; i < dim; i += 16) {
    const __mmask16 k = dim - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (dim - i)) - 1);
    const __m512 v = _mm512_mul_ps(vi, _mm512_maskz_loadu_ps(k, x + i));
    _mm512_mask_storeu_ps(out + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, weight + i), v));
  }
}

KVSHARE_TARGET_AVX2 void RmsNormAvx2(const float* x, const float* weight, int dim, float eps,
                                     float* out) {
  __m256 acc = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= dim; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    acc = _mm256_fmadd_ps(v, v, acc);
  }
  float buf[8];
  _mm256_storeu_ps(buf, acc);
  float ss = ((buf[0] + buf[4]) + (buf[1] + buf[5])) + ((buf[2] + buf[6]) + (buf[3] + buf[7]));
  for (; i < dim; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss / dim + eps);
  for (i = 0; i < dim; ++i) out[i] = weight[i] * (inv * x[i]);
}

void RmsNormScalar(const float* x, const float* weight, int dim, float eps, float* out) {
  float ss = 0.0f;
  for (int i = 0; i < dim; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss / dim + eps);
  for (int i = 0; i < dim; ++i) out[i] = weight[i] * (inv * x[i]);
}

KVSHARE_TARGET_AVX512 void SiluMulAvx512(const float* gate, const float* up, int64_t count,
                                         float* out) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 k = count - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (count - i)) - 1);
    const __m512 g = _mm512_maskz_loadu_ps(k, gate + i);
    const __m512 sig =
        _mm512_div_ps(one, _mm512_add_ps(one, Exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_mask_storeu_ps(out + i, k,
                          _mm512_mul_ps(_mm512_mul_ps(g, sig), _mm512_maskz_loadu_ps(k, up + i)));
  }
}

KVSHARE_TARGET_AVX2 void SiluMulAvx2(const float* gate, const float* up, int64_t count,
                                     float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 sig =
        _mm256_div_ps(one, _mm256_add_ps(one, Exp256(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
  }
  for (; i < count; ++i) out[i] = gate[i] * (1.0f / (1.0f + std::exp(-gate[i]))) * up[i];
}

// gelu_tanh(g) = 0.5 g (1 + tanh(u)) with u = sqrt(2/pi) (g + 0.044715 g^3), computed as
// g / (1 + exp(-2u)) (the same function: 1 + tanh(u) = 2 sigmoid(2u)), which keeps its
// relative precision where tanh(u) nears -1 and 1 + tanh(u) would cancel.
constexpr float kSqrt2OverPi = 0.7978845608f;
constexpr float kGeluCubic = 0.044715f;

KVSHARE_TARGET_AVX512 void GeluMulAvx512(const float* gate, const float* up, int64_t count,
                                         float* out) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 minus_2c = _mm512_set1_ps(-2.0f * kSqrt2OverPi);
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 k = count - i >= 16 ? 0xffff : static_cast<__mmask16>((1u << (count - i)) - 1);
    const __m512 g = _mm512_maskz_loadu_ps(k, gate + i);
    const __m512 g3 = _mm512_mul_ps(_mm512_mul_ps(g, g), g);
    const __m512 minus_2u =
        _mm512_mul_ps(minus_2c, _mm512_fmadd_ps(_mm512_set1_ps(kGeluCubic), g3, g));
    const __m512 gelu = _mm512_div_ps(g, _mm512_add_ps(one, Exp512(minus_2u)));
    _mm512_mask_storeu_ps(out + i, k, _mm512_mul_ps(gelu, _mm512_maskz_loadu_ps(k, up + i)));
  }
}

float GeluScalar(float g) {
  return g / (1.0f + std::exp(-2.0f * kSqrt2OverPi * (g + kGeluCubic * g * g * g)));
}

KVSHARE_TARGET_AVX2 void GeluMulAvx2(const float* gate, const float* up, int64_t count,
                                     float* out) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 minus_2c = _mm256_set1_ps(-2.0f * kSqrt2OverPi);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 g3 = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
    const __m256 minus_2u =
        _mm256_mul_ps(minus_2c, _mm256_fmadd_ps(_mm256_set1_ps(kGeluCubic), g3, g));
    const __m256 gelu = _mm256_div_ps(g, _mm256_add_ps(one, Exp256(minus_2u)));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(gelu, _mm256_loadu_ps(up + i)));
  }
  for (; i < count; ++i) out[i] = GeluScalar(gate[i]) * up[i];
}

}  // namespace

void RmsNormRows(Isa isa, const float* x, const float* weight, int n, int dim, float eps,
                 float* out) {
  for (int t = 0; t < n; ++t) {
    const float* xt = x + static_cast<int64_t>(t) * dim;
    float* ot = out + static_cast<int64_t>(t) * dim;
    switch (isa) {
      case Isa::kAvx512:
        RmsNormAvx512(xt, weight, dim, eps, ot);
        break;
      case Isa::kAvx2:
        RmsNormAvx2(xt, weight, dim, eps, ot);
        break;
      case Isa::kScalar:
        RmsNormScalar(xt, weight, dim, eps, ot);
        break;
    }
  }
}

void SiluMulRange(Isa isa, const float* gate, const float* up, int64_t count, float* out) {
  switch (isa) {
    case Isa::kAvx512:
      return SiluMulAvx512(gate, up, count, out);
    case Isa::kAvx2:
      return SiluMulAvx2(gate, up, count, out);
    case Isa::kScalar:
      for (int64_t i = 0; i < count; ++i) {
        out[i] = gate[i] * (1.0f / (1.0f + std::exp(-gate[i]))) * up[i];
      }
      return;
  }
}

void AddRange(Isa, float* x, const float* y, int64_t count) {
  // The compiler vectorizes this plain loop well enough at SSE2; it is memory-bound.
  for (int64_t i = 0; i < count; ++i) x[i] += y[i];
}

void RopeFrequencies(int head_dim, float theta, float* freq) {
  for (int i = 0; i < head_dim; i += 2) {
    freq[i / 2] = 1.0f / powf(theta, i / static_cast<float>(head_dim));
  }
}

void RopeRows(float* x, const int32_t* pos, int n, int n_heads, int head_dim, const float* freq) {
  constexpr int kMaxPairs = 512;
  float fcr[kMaxPairs], fci[kMaxPairs];
  const int pairs = head_dim / 2;
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < pairs && i < kMaxPairs; ++i) {
      const float val = pos[t] * freq[i];
      fcr[i] = cosf(val);
      fci[i] = sinf(val);
    }
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
      for (int i = 0; i < pairs; ++i) {
        const float v0 = v[2 * i], v1 = v[2 * i + 1];
        v[2 * i] = v0 * fcr[i] - v1 * fci[i];
        v[2 * i + 1] = v0 * fci[i] + v1 * fcr[i];
      }
    }
  }
}

void GeluMulRange(Isa isa, const float* gate, const float* up, int64_t count, float* out) {
  switch (isa) {
    case Isa::kAvx512:
      return GeluMulAvx512(gate, up, count, out);
    case Isa::kAvx2:
      return GeluMulAvx2(gate, up, count, out);
    case Isa::kScalar:
      for (int64_t i = 0; i < count; ++i) out[i] = GeluScalar(gate[i]) * up[i];
      return;
  }
}

}  // namespace kvshare::cpu
