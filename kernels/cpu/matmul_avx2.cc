// AVX2 (+FMA, F16C) matmul kernels: the same algorithms as matmul_avx512.cc on 256-bit
// registers. A packed 64-byte chunk is two registers: rows 0..7 and rows 8..15 of the group.
// Integer dots use maddubs (u8 x s8 -> pairs of s16) and madd (-> s32).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/matmul_kernels.h"

namespace kvshare::cpu::avx2 {
namespace {

constexpr int kTokenTile = 4;
// One block ahead, as in matmul_avx512.cc.
KVSHARE_TARGET_AVX2 inline void PrefetchNextBlock(const CpuWeight& w, const uint8_t* block) {
  const int block_bytes = w.unit_bytes() / 2;
  const char* p = reinterpret_cast<const char*>(block) + block_bytes;
  for (int i = 0; i < block_bytes; i += 64) _mm_prefetch(p + i, _MM_HINT_T0);
}

KVSHARE_TARGET_AVX2 inline __m256i BroadcastDword(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

KVSHARE_TARGET_AVX2 inline void StoreRows(float* dst, __m256 v, int valid) {
  if (valid >= 8) {
    _mm256_storeu_ps(dst, v);
  } else if (valid > 0) {
    float tmp[8];
    _mm256_storeu_ps(tmp, v);
    std::memcpy(dst, tmp, valid * sizeof(float));
  }
}

KVSHARE_TARGET_AVX2 inline __m256 LoadHalves(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

constexpr bool BytesForm(Pack p) { return p == Pack::kQ8_0 || p == Pack::kQ8F; }
constexpr bool MayHaveOffsets(Pack p) {
  return p == Pack::kQ4_1 || p == Pack::kQ4F || p == Pack::kQ8F;
}

// kQ5_0, chunk k of a block (8 rows at qb): each byte of lo holds q5 of the element its low
// nibble holds, each byte of hi that of its high nibble (0..31; packed_weight.h).
KVSHARE_TARGET_AVX2 inline void FiveBitChunk(const uint8_t* qb, int k, __m256i* lo, __m256i* hi) {
  const __m256i raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(qb + 64 * k));
  const __m256i high =
      _mm256_srli_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(qb + 4 * 64)), k);
  const __m256i nibbles = _mm256_set1_epi8(0x0f), bit4 = _mm256_set1_epi8(0x10);
  *lo = _mm256_or_si256(_mm256_and_si256(raw, nibbles),
                        _mm256_and_si256(_mm256_slli_epi32(high, 4), bit4));
  *hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(raw, 4), nibbles),
                        _mm256_and_si256(high, bit4));
}

// Scales of block b for rows 8h..8h+7 of group g: d[i] multiplies elements 16i..16i+15 (the
// same register twice except in kQ8F); m is zero without offsets.
template <Pack P>
KVSHARE_TARGET_AVX2 inline void LoadScales(const CpuWeight& w, int64_t g, int64_t b, int h,
                                           __m256* d, __m256* m) {
  if constexpr (P == Pack::kQ4F || P == Pack::kQ8F) {
    const float* s = w.block_scales_f32(g, b) + 8 * h;
    d[0] = _mm256_load_ps(s);
    d[1] = P == Pack::kQ8F ? _mm256_load_ps(s + kGroupRows) : d[0];
    *m = w.has_offsets() ? _mm256_load_ps(w.block_offsets_f32(g, b) + 8 * h) : _mm256_setzero_ps();
  } else {
    d[0] = d[1] = LoadHalves(w.block_scales(g, b) + 8 * h);
    *m = P == Pack::kQ4_1 ? LoadHalves(w.block_offsets(g, b) + 8 * h) : _mm256_setzero_ps();
  }
}

// The integer dot of one block's 8 rows with one row of quantized x (xq: the block's 32 int8;
// qsum: their sum, for the Q4_0 / Q5_0 zero points): dot[0] the whole dot, except for kQ8F (two
// scales per block), whose halves are dot[0] and dot[1].
template <Pack P>
KVSHARE_TARGET_AVX2 inline void BlockDot(const __m256i* wq, const __m256i* ws, const int8_t* xq,
                                         int32_t qsum, __m256i* dot) {
  const __m256i ones = _mm256_set1_epi16(1);
  dot[0] = dot[1] = _mm256_setzero_si256();
  if constexpr (BytesForm(P)) {
    // Moving q's sign onto x keeps maddubs' unsigned operand |q| <= 128: no saturation.
    // kQ8F: the two 16-element halves (dwords 0..3, 4..7) are summed apart.
    for (int j = 0; j < 8; ++j) {
      const __m256i xs = _mm256_sign_epi8(BroadcastDword(xq + 4 * j), ws[j]);
      __m256i& dj = dot[P == Pack::kQ8F ? j / 4 : 0];
      dj = _mm256_add_epi32(dj, _mm256_madd_epi16(_mm256_maddubs_epi16(wq[j], xs), ones));
    }
  } else {
    // Nibble products are <= 15 * 127 * 2 per pair; eight of them fit in int16. kQ5_0's
    // are <= 31 * 127 * 2: four of them.
    constexpr int kPerSum = P == Pack::kQ5_0 ? 4 : 8;
    for (int j0 = 0; j0 < 8; j0 += kPerSum) {
      __m256i s16 = _mm256_maddubs_epi16(wq[j0], BroadcastDword(xq + 4 * j0));
      for (int j = j0 + 1; j < j0 + kPerSum; ++j) {
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(wq[j], BroadcastDword(xq + 4 * j)));
      }
      dot[0] = _mm256_add_epi32(dot[0], _mm256_madd_epi16(s16, ones));
    }
    if constexpr (P == Pack::kQ4_0 || P == Pack::kQ5_0) {
      const int zero = P == Pack::kQ4_0 ? 8 : 16;
      dot[0] = _mm256_add_epi32(dot[0], _mm256_set1_epi32(-zero * qsum));
    }
  }
}

// 8 rows (half h of group g) x NT tokens. kTwoDigits: as in matmul_avx512.cc.
template <Pack P, int NT, bool kTwoDigits>
KVSHARE_TARGET_AVX2 void Int8Tile(const CpuWeight& w, int64_t g, int h, const QuantizedBatch& x,
                                  int t0, float* out, int64_t ldo, int valid) {
  const int64_t nb = w.blocks();
  const bool offsets = MayHaveOffsets(P) && (P != Pack::kQ8F || w.has_offsets());
  const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();

  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* qb = w.block_quants(g, b) + 32 * h;
    if (h == 0) PrefetchNextBlock(w, qb);
    __m256i wq[8];  // Q4: unsigned nibbles; Q8: |q|
    __m256i ws[8];  // Q8: q (for the sign)
    if constexpr (BytesForm(P)) {
      for (int k = 0; k < 8; ++k) {
        ws[k] = _mm256_xor_si256(_mm256_load_si256(reinterpret_cast<const __m256i*>(qb + 64 * k)),
                                 _mm256_set1_epi8(-128));
        wq[k] = _mm256_abs_epi8(ws[k]);
      }
    } else if constexpr (P == Pack::kQ5_0) {
      for (int k = 0; k < 4; ++k) FiveBitChunk(qb, k, &wq[k], &wq[k + 4]);
    } else {
      for (int k = 0; k < 4; ++k) {
        const __m256i raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(qb + 64 * k));
        wq[k] = _mm256_and_si256(raw, low_nibbles);
        wq[k + 4] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low_nibbles);
      }
    }
    __m256 d[2], m;
    LoadScales<P>(w, g, b, h, d, &m);
    constexpr int kHalves = P == Pack::kQ8F ? 2 : 1;
    if constexpr (kTwoDigits) {  // the joined dots count 1/256 steps
      for (int i = 0; i < kHalves; ++i) {
        d[i] = _mm256_mul_ps(d[i], _mm256_set1_ps(1.0f / kSecondDigitBase));
      }
    }
    for (int t = 0; t < NT; ++t) {
      const int64_t xt = t0 + t, xb = xt * x.nb + b;
      const __m256 xscale = _mm256_set1_ps(x.scale[xb]);
      __m256i dot[2];
      BlockDot<P>(wq, ws, x.q + xt * x.cols + b * 32, x.qsum[xb], dot);
      if constexpr (kTwoDigits) {
        __m256i dot2[2];
        BlockDot<P>(wq, ws, x.q2 + xt * x.cols + b * 32, x.q2sum[xb], dot2);
        for (int i = 0; i < kHalves; ++i) {
          dot[i] = _mm256_add_epi32(_mm256_slli_epi32(dot[i], kSecondDigitBits), dot2[i]);
        }
      }
      for (int i = 0; i < kHalves; ++i) {
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[i]), _mm256_mul_ps(d[i], xscale), acc[t]);
      }
      if (offsets) acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(x.sum[xb]), acc[t]);
    }
  }
  for (int t = 0; t < NT; ++t) StoreRows(out + t * ldo, acc[t], valid);
}

template <Pack P, bool kTwoDigits>
KVSHARE_TARGET_AVX2 void Int8GroupsT(const CpuWeight& w, const QuantizedBatch& x, int t0, int t1,
                                     int64_t g0, int64_t g1, float* out) {
  const int64_t rows = w.rows();
  const int tiles = (t1 - t0 + kTokenTile - 1) / kTokenTile;  // token tiles per half group
  for (int64_t g = g0; g < g1; ++g) {
    for (int h = 0; h < 2; ++h) {
      const int valid = static_cast<int>(std::min<int64_t>(8, rows - g * kGroupRows - 8 * h));
      if (valid <= 0) continue;
      for (int t = t0; t < t1; t += kTokenTile) {
        if (tiles > 1 && g + 1 < w.n_groups()) {
          w.PrefetchGroupPart(g + 1, h * tiles + (t - t0) / kTokenTile, 2 * tiles);
        }
        float* o = out + t * rows + g * kGroupRows + 8 * h;
        switch (std::min(kTokenTile, t1 - t)) {
          case 1:
            Int8Tile<P, 1, kTwoDigits>(w, g, h, x, t, o, rows, valid);
            break;
          case 2:
            Int8Tile<P, 2, kTwoDigits>(w, g, h, x, t, o, rows, valid);
            break;
          case 3:
            Int8Tile<P, 3, kTwoDigits>(w, g, h, x, t, o, rows, valid);
            break;
          default:
            Int8Tile<P, 4, kTwoDigits>(w, g, h, x, t, o, rows, valid);
            break;
        }
      }
    }
  }
}

// 8 rows x 1 token, fp32 activations; quants unpacked with shifts and masks. kQ8F sums each
// 16-element half apart (one scale each).
template <Pack P>
KVSHARE_TARGET_AVX2 void F32Tile(const CpuWeight& w, int64_t g, int h, const float* x,
                                 const float* xsum, float* out, int valid) {
  constexpr int kHalves = P == Pack::kQ8F ? 2 : 1;
  const bool offsets = MayHaveOffsets(P) && (P != Pack::kQ8F || w.has_offsets());
  const int64_t nb = w.blocks();
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* qb = w.block_quants(g, b) + 32 * h;
    const float* xb = x + b * 32;
    __m256 d[2], m;
    LoadScales<P>(w, g, b, h, d, &m);
    for (int half = 0; half < kHalves; ++half) {
      __m256 bacc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                        _mm256_setzero_ps()};
      if constexpr (BytesForm(P)) {
        for (int k = half * 8 / kHalves; k < (half + 1) * 8 / kHalves; ++k) {
          const __m256i raw =
              _mm256_xor_si256(_mm256_load_si256(reinterpret_cast<const __m256i*>(qb + 64 * k)),
                               _mm256_set1_epi8(-128));
          for (int e = 0; e < 4; ++e) {
            const __m256 v =
                _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(raw, 24 - 8 * e), 24));
            bacc[e] = _mm256_fmadd_ps(v, _mm256_set1_ps(xb[4 * k + e]), bacc[e]);
          }
        }
      } else {
        // Each dword lane's byte e holds the codes of elements 4k + e (lo) and 16 + 4k + e
        // (hi): nibbles, or kQ5_0's 5-bit codes.
        const __m256i code_mask = _mm256_set1_epi32(P == Pack::kQ5_0 ? 0x1f : 0x0f);
        const __m256i bias = _mm256_set1_epi32(P == Pack::kQ5_0 ? 16 : (P == Pack::kQ4_0 ? 8 : 0));
        for (int k = 0; k < 4; ++k) {
          __m256i lo_codes, hi_codes;
          if constexpr (P == Pack::kQ5_0) {
            FiveBitChunk(qb, k, &lo_codes, &hi_codes);
          } else {
            lo_codes = _mm256_load_si256(reinterpret_cast<const __m256i*>(qb + 64 * k));
            hi_codes = _mm256_srli_epi32(lo_codes, 4);
          }
          for (int e = 0; e < 4; ++e) {
            const __m256 lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(
                _mm256_and_si256(_mm256_srli_epi32(lo_codes, 8 * e), code_mask), bias));
            const __m256 hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(
                _mm256_and_si256(_mm256_srli_epi32(hi_codes, 8 * e), code_mask), bias));
            bacc[e] = _mm256_fmadd_ps(lo, _mm256_set1_ps(xb[4 * k + e]), bacc[e]);
            bacc[(e + 1) % 4] =
                _mm256_fmadd_ps(hi, _mm256_set1_ps(xb[16 + 4 * k + e]), bacc[(e + 1) % 4]);
          }
        }
      }
      const __m256 sum =
          _mm256_add_ps(_mm256_add_ps(bacc[0], bacc[1]), _mm256_add_ps(bacc[2], bacc[3]));
      acc = _mm256_fmadd_ps(sum, d[half], acc);
    }
    if (offsets) acc = _mm256_fmadd_ps(m, _mm256_set1_ps(xsum[b]), acc);
  }
  StoreRows(out, acc, valid);
}

template <Pack P>
KVSHARE_TARGET_AVX2 void F32GroupsT(const CpuWeight& w, const float* x, const float* xsum, int t0,
                                    int t1, int64_t g0, int64_t g1, float* out) {
  const int64_t rows = w.rows(), cols = w.cols(), nb = w.blocks();
  for (int64_t g = g0; g < g1; ++g) {
    for (int h = 0; h < 2; ++h) {
      const int valid = static_cast<int>(std::min<int64_t>(8, rows - g * kGroupRows - 8 * h));
      if (valid <= 0) continue;
      for (int t = t0; t < t1; ++t) {
        F32Tile<P>(w, g, h, x + t * cols, xsum + t * nb, out + t * rows + g * kGroupRows + 8 * h,
                   valid);
      }
    }
  }
}

template <DType T>
KVSHARE_TARGET_AVX2 inline __m256 LoadWeights(const void* row, int64_t c) {
  if constexpr (T == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(row) + c);
  } else {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(row) + c));
    if constexpr (T == DType::kF16) {
      return _mm256_cvtph_ps(h);
    } else {
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
  }
}

KVSHARE_TARGET_AVX2 inline float HorizontalSum(__m256 v) {
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
}

template <DType T>
KVSHARE_TARGET_AVX2 void DenseRowsT(const CpuWeight& w, const float* x, int t0, int t1, int64_t r0,
                                    int64_t r1, float* out) {
  const Tensor& tensor = w.tensor();
  const int64_t rows = w.rows(), cols = w.cols();
  const int64_t main = cols / 8 * 8;
  float wt[8];
  for (int64_t r = r0; r < r1; ++r) {
    const void* row = tensor.row_data(r);
    for (int t = t0; t < t1; ++t) {
      const float* xt = x + t * cols;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t c = 0; c < main; c += 8) {
        acc = _mm256_fmadd_ps(LoadWeights<T>(row, c), _mm256_loadu_ps(xt + c), acc);
      }
      float sum = HorizontalSum(acc);
      if (main < cols) {
        DequantizeRow(T, static_cast<const uint8_t*>(row) + main * (T == DType::kF32 ? 4 : 2),
                      cols - main, wt);
        for (int64_t c = main; c < cols; ++c) sum += wt[c - main] * xt[c];
      }
      out[t * rows + r] = sum;
    }
  }
}

}  // namespace

namespace {

// Stores 4 x 8 int32 (each in [-127, 127]) as 32 int8 in order and returns their sum.
KVSHARE_TARGET_AVX2 int32_t PackBlock(const __m256i* q, int8_t* dst) {
  // packs interleave 128-bit lanes; undo with a permute.
  const __m256i p16a = _mm256_packs_epi32(q[0], q[1]);
  const __m256i p16b = _mm256_packs_epi32(q[2], q[3]);
  const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b),
                                                 _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), p8);
  const __m256i qs = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
  __m128i q4 = _mm_add_epi32(_mm256_castsi256_si128(qs), _mm256_extracti128_si256(qs, 1));
  q4 = _mm_add_epi32(q4, _mm_shuffle_epi32(q4, 0x4e));
  q4 = _mm_add_epi32(q4, _mm_shuffle_epi32(q4, 0xb1));
  return _mm_cvtsi128_si32(q4);
}

}  // namespace

KVSHARE_TARGET_AVX2 void QuantizeActivations(const float* x, int64_t cols,
                                             const QuantizedActivations& out) {
  const __m256 sign_off = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < cols / 32; ++b) {
    __m256 v[4];
    for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + 32 * b + 8 * i);
    __m256 mx =
        _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], sign_off), _mm256_and_ps(v[1], sign_off)),
                      _mm256_max_ps(_mm256_and_ps(v[2], sign_off), _mm256_and_ps(v[3], sign_off)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    const float amax = _mm_cvtss_f32(m4);
    const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    const __m256 iv = _mm256_set1_ps(inv);
    __m256 steps[4];
    __m256i q[4];
    for (int i = 0; i < 4; ++i) {
      steps[i] = _mm256_mul_ps(v[i], iv);
      q[i] = _mm256_cvtps_epi32(steps[i]);
    }
    out.qsum[b] = PackBlock(q, out.q + 32 * b);
    if (out.q2 != nullptr) {  // the second digit: what rounding to q left, in 1/256 steps
      const __m256 base = _mm256_set1_ps(kSecondDigitBase);
      const __m256i hi = _mm256_set1_epi32(kSecondDigitMax),
                    lo = _mm256_set1_epi32(-kSecondDigitMax);
      __m256i q2[4];
      for (int i = 0; i < 4; ++i) {
        q2[i] = _mm256_max_epi32(
            lo,
            _mm256_min_epi32(hi, _mm256_cvtps_epi32(_mm256_mul_ps(
                                     _mm256_sub_ps(steps[i], _mm256_cvtepi32_ps(q[i])), base))));
      }
      out.q2sum[b] = PackBlock(q2, out.q2 + 32 * b);
    }
    out.scale[b] = amax / 127.0f;
    // The sum in QuantizeActivationsRef's order: lanes l + l+16, then halving.
    const __m256 a = _mm256_add_ps(v[0], v[2]);  // lanes 0..7
    const __m256 c = _mm256_add_ps(v[1], v[3]);  // lanes 8..15
    out.sum[b] = HorizontalSum(_mm256_add_ps(a, c));
  }
}

namespace {

template <bool kTwoDigits>
void Int8GroupsOf(const CpuWeight& w, const QuantizedBatch& x, int t0, int t1, int64_t g0,
                  int64_t g1, float* out) {
  switch (w.pack()) {
    case Pack::kQ8_0:
      return Int8GroupsT<Pack::kQ8_0, kTwoDigits>(w, x, t0, t1, g0, g1, out);
    case Pack::kQ4_0:
      return Int8GroupsT<Pack::kQ4_0, kTwoDigits>(w, x, t0, t1, g0, g1, out);
    case Pack::kQ5_0:
      return Int8GroupsT<Pack::kQ5_0, kTwoDigits>(w, x, t0, t1, g0, g1, out);
    case Pack::kQ4_1:
      return Int8GroupsT<Pack::kQ4_1, kTwoDigits>(w, x, t0, t1, g0, g1, out);
    case Pack::kQ4F:
      return Int8GroupsT<Pack::kQ4F, kTwoDigits>(w, x, t0, t1, g0, g1, out);
    case Pack::kQ8F:
      return Int8GroupsT<Pack::kQ8F, kTwoDigits>(w, x, t0, t1, g0, g1, out);
    case Pack::kNone:
      return;
  }
}

}  // namespace

void Int8Groups(const CpuWeight& w, const QuantizedBatch& x, int t0, int t1, int64_t g0, int64_t g1,
                float* out) {
  if (x.q2 != nullptr) return Int8GroupsOf<true>(w, x, t0, t1, g0, g1, out);
  Int8GroupsOf<false>(w, x, t0, t1, g0, g1, out);
}

void F32Groups(const CpuWeight& w, const float* x, const float* xsum, int t0, int t1, int64_t g0,
               int64_t g1, float* out) {
  switch (w.pack()) {
    case Pack::kQ8_0:
      return F32GroupsT<Pack::kQ8_0>(w, x, xsum, t0, t1, g0, g1, out);
    case Pack::kQ4_0:
      return F32GroupsT<Pack::kQ4_0>(w, x, xsum, t0, t1, g0, g1, out);
    case Pack::kQ5_0:
      return F32GroupsT<Pack::kQ5_0>(w, x, xsum, t0, t1, g0, g1, out);
    case Pack::kQ4_1:
      return F32GroupsT<Pack::kQ4_1>(w, x, xsum, t0, t1, g0, g1, out);
    case Pack::kQ4F:
      return F32GroupsT<Pack::kQ4F>(w, x, xsum, t0, t1, g0, g1, out);
    case Pack::kQ8F:
      return F32GroupsT<Pack::kQ8F>(w, x, xsum, t0, t1, g0, g1, out);
    case Pack::kNone:
      return;
  }
}

void DenseRows(const CpuWeight& w, const float* x, int t0, int t1, int64_t r0, int64_t r1,
               float* out) {
  switch (w.type()) {
    case DType::kF32:
      return DenseRowsT<DType::kF32>(w, x, t0, t1, r0, r1, out);
    case DType::kF16:
      return DenseRowsT<DType::kF16>(w, x, t0, t1, r0, r1, out);
    case DType::kBF16:
      return DenseRowsT<DType::kBF16>(w, x, t0, t1, r0, r1, out);
    default:
      return;
  }
}

}  // namespace kvshare::cpu::avx2
