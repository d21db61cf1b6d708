// AVX-512 (F/BW/VL/DQ + VNNI) matmul kernels. See matmul_kernels.h for what each computes.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/matmul_kernels.h"

// GCC 12 reports the _mm512_undefined_* pass-through inside AVX-512 intrinsics as an
// uninitialized read (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvshare::cpu::avx512 {
namespace {

constexpr int kTokenTile = 8;  // tokens sharing one unpacking of a weight block

// Software prefetch of the weight stream one block (of the group) ahead. Measured on the SmolLM2
// decode sweep: neutral to +4% on an idle machine, up to +30% when other processes compete for
// the caches and memory; two or more blocks ahead is slower.
KVSHARE_TARGET_AVX512 inline void PrefetchNextBlock(const CpuWeight& w, const uint8_t* block) {
  const int block_bytes = w.unit_bytes() / 2;
  const char* p = reinterpret_cast<const char*>(block) + block_bytes;
  for (int i = 0; i < block_bytes; i += 64) _mm_prefetch(p + i, _MM_HINT_T0);
}

KVSHARE_TARGET_AVX512 inline __m512i BroadcastDword(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

KVSHARE_TARGET_AVX512 inline void StoreRows(float* dst, __m512 v, int valid) {
  if (valid == 16) {
    _mm512_storeu_ps(dst, v);
  } else {
    _mm512_mask_storeu_ps(dst, static_cast<__mmask16>((1u << valid) - 1), v);
  }
}

// Scales and offsets of block b for the 16 rows of group g: d[h] multiplies elements
// 16h..16h+15 (the same register twice except in kQ8F); m is zero without offsets.
template <Pack P>
KVSHARE_TARGET_AVX512 inline void LoadScales(const CpuWeight& w, int64_t g, int64_t b, __m512* d,
                                             __m512* m) {
  if constexpr (P == Pack::kQ4F || P == Pack::kQ8F) {
    const float* s = w.block_scales_f32(g, b);
    d[0] = _mm512_load_ps(s);
    d[1] = P == Pack::kQ8F ? _mm512_load_ps(s + kGroupRows) : d[0];
    *m = w.has_offsets() ? _mm512_load_ps(w.block_offsets_f32(g, b)) : _mm512_setzero_ps();
  } else {
    d[0] = d[1] =
        _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(w.block_scales(g, b))));
    *m = _mm512_setzero_ps();
    if constexpr (P == Pack::kQ4_1) {
      *m = _mm512_cvtph_ps(
          _mm256_load_si256(reinterpret_cast<const __m256i*>(w.block_offsets(g, b))));
    }
  }
}

constexpr bool BytesForm(Pack p) { return p == Pack::kQ8_0 || p == Pack::kQ8F; }
constexpr bool MayHaveOffsets(Pack p) {
  return p == Pack::kQ4_1 || p == Pack::kQ4F || p == Pack::kQ8F;
}

// kQ5_0, chunk k of a block (16 rows): each byte of lo holds q5 of the element its low nibble
// holds, each byte of hi that of its high nibble (0..31; packed_weight.h).
KVSHARE_TARGET_AVX512 inline void FiveBitChunk(const uint8_t* qb, int k, __m512i* lo, __m512i* hi) {
  const __m512i raw = _mm512_load_si512(qb + 64 * k);
  const __m512i high = _mm512_srli_epi32(_mm512_load_si512(qb + 4 * 64), k);
  const __m512i nibbles = _mm512_set1_epi8(0x0f), bit4 = _mm512_set1_epi8(0x10);
  *lo = _mm512_or_si512(_mm512_and_si512(raw, nibbles),
                        _mm512_and_si512(_mm512_slli_epi32(high, 4), bit4));
  *hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(raw, 4), nibbles),
                        _mm512_and_si512(high, bit4));
}

// The integer dot of one block's 16 rows with one row of quantized x (xq: the block's 32 int8;
// qsum, qsum_lo: their sum and their first half's, for the zero points): *half0 the whole dot,
// except for kQ8F (two scales per block), whose halves are *half0 and *half1.
template <Pack P>
KVSHARE_TARGET_AVX512 inline void BlockDot(const __m512i* wq, const int8_t* xq, int32_t qsum,
                                           int32_t qsum_lo, __m512i* half0, __m512i* half1) {
  if constexpr (P == Pack::kQ8F) {
    // Stored bytes are q + 128, so each half's dot overshoots by 128 * (its sum of xq).
    __m512i i0 = _mm512_set1_epi32(-128 * qsum_lo);
    __m512i i1 = _mm512_set1_epi32(-128 * (qsum - qsum_lo));
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      i0 = _mm512_dpbusd_epi32(i0, wq[j], BroadcastDword(xq + 4 * j));
      i1 = _mm512_dpbusd_epi32(i1, wq[j + 4], BroadcastDword(xq + 16 + 4 * j));
    }
    *half0 = i0;
    *half1 = i1;
  } else {
    // Zero points: Q4_0 stores nibble = q + 8, Q5_0 q + 16, the packed Q8_0 q + 128; their dot
    // with x overshoots by 8 (16, 128) * sum(xq), so the integer sum starts there.
    __m512i i0 = _mm512_setzero_si512();
    if constexpr (P == Pack::kQ4_0) i0 = _mm512_set1_epi32(-8 * qsum);
    if constexpr (P == Pack::kQ5_0) i0 = _mm512_set1_epi32(-16 * qsum);
    if constexpr (P == Pack::kQ8_0) i0 = _mm512_set1_epi32(-128 * qsum);
    __m512i i1 = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int j = 0; j < 8; j += 2) {
      i0 = _mm512_dpbusd_epi32(i0, wq[j], BroadcastDword(xq + 4 * j));
      i1 = _mm512_dpbusd_epi32(i1, wq[j + 1], BroadcastDword(xq + 4 * j + 4));
    }
    *half0 = _mm512_add_epi32(i0, i1);
  }
}

// 16 rows (one group) x NT tokens, integer dot products. out points at out[t0][16 g].
// kTwoDigits (Activations::kInt8x2): each x is q + q2 / 256 steps of its block's scale; the
// two digits' integer dots are joined as (dot << 8) + dot2 and take the scale over 256 (exact
// in int32 and, for 4-bit quants, in its conversion to fp32: |dot| <= 32 * 15 * 127).
template <Pack P, int NT, bool kTwoDigits>
KVSHARE_TARGET_AVX512 void Int8Tile(const CpuWeight& w, int64_t g, const QuantizedBatch& x, int t0,
                                    float* out, int64_t ldo, int valid) {
  const int64_t nb = w.blocks();
  const bool offsets = MayHaveOffsets(P) && (P != Pack::kQ8F || w.has_offsets());
  const __m512i low_nibbles = _mm512_set1_epi8(0x0f);
  __m512 acc[NT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();

  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* qb = w.block_quants(g, b);
    PrefetchNextBlock(w, qb);
    // wq[j] multiplies the x dword j of the block: Q4: j < 4 low nibbles of chunk j (elements
    // 4j..4j+3), j >= 4 high nibbles of chunk j-4 (elements 16+4(j-4)..); Q8: chunk j.
    __m512i wq[8];
    if constexpr (BytesForm(P)) {
#pragma GCC unroll 8
      for (int k = 0; k < 8; ++k) wq[k] = _mm512_load_si512(qb + 64 * k);
    } else if constexpr (P == Pack::kQ5_0) {
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) FiveBitChunk(qb, k, &wq[k], &wq[k + 4]);
    } else {
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const __m512i raw = _mm512_load_si512(qb + 64 * k);
        wq[k] = _mm512_and_si512(raw, low_nibbles);
        wq[k + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low_nibbles);
      }
    }
    __m512 d[2], m;
    LoadScales<P>(w, g, b, d, &m);
    if constexpr (kTwoDigits) {  // the joined dots count 1/256 steps
      const __m512 step = _mm512_set1_ps(1.0f / kSecondDigitBase);
      d[0] = _mm512_mul_ps(d[0], step);
      d[1] = _mm512_mul_ps(d[1], step);
    }
#pragma GCC unroll 8
    for (int t = 0; t < NT; ++t) {
      const int64_t xt = t0 + t, xb = xt * x.nb + b;
      const __m512 xs = _mm512_set1_ps(x.scale[xb]);
      __m512i i0, i1;
      BlockDot<P>(wq, x.q + xt * x.cols + b * 32, x.qsum[xb], P == Pack::kQ8F ? x.qsum_lo[xb] : 0,
                  &i0, &i1);
      if constexpr (kTwoDigits) {
        __m512i j0, j1;
        BlockDot<P>(wq, x.q2 + xt * x.cols + b * 32, x.q2sum[xb],
                    P == Pack::kQ8F ? x.q2sum_lo[xb] : 0, &j0, &j1);
        i0 = _mm512_add_epi32(_mm512_slli_epi32(i0, kSecondDigitBits), j0);
        if constexpr (P == Pack::kQ8F) {
          i1 = _mm512_add_epi32(_mm512_slli_epi32(i1, kSecondDigitBits), j1);
        }
      }
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_mul_ps(d[0], xs), acc[t]);
      if constexpr (P == Pack::kQ8F) {
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_mul_ps(d[1], xs), acc[t]);
      }
      if (offsets) acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(x.sum[xb]), acc[t]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) StoreRows(out + t * ldo, acc[t], valid);
}

template <Pack P, bool kTwoDigits>
KVSHARE_TARGET_AVX512 void Int8GroupsT(const CpuWeight& w, const QuantizedBatch& x, int t0, int t1,
                                       int64_t g0, int64_t g1, float* out) {
  const int64_t rows = w.rows();
  const int tiles = (t1 - t0 + kTokenTile - 1) / kTokenTile;  // token tiles per group
  for (int64_t g = g0; g < g1; ++g) {
    const int valid = static_cast<int>(std::min<int64_t>(kGroupRows, rows - g * kGroupRows));
    for (int t = t0; t < t1; t += kTokenTile) {
      if (tiles > 1 && g + 1 < w.n_groups()) {
        w.PrefetchGroupPart(g + 1, (t - t0) / kTokenTile, tiles);
      }
      float* o = out + t * rows + g * kGroupRows;
      switch (std::min(kTokenTile, t1 - t)) {
        case 1:
          Int8Tile<P, 1, kTwoDigits>(w, g, x, t, o, rows, valid);
          break;
        case 2:
          Int8Tile<P, 2, kTwoDigits>(w, g, x, t, o, rows, valid);
          break;
        case 3:
          Int8Tile<P, 3, kTwoDigits>(w, g, x, t, o, rows, valid);
          break;
        case 4:
          Int8Tile<P, 4, kTwoDigits>(w, g, x, t, o, rows, valid);
          break;
        case 5:
          Int8Tile<P, 5, kTwoDigits>(w, g, x, t, o, rows, valid);
          break;
        case 6:
          Int8Tile<P, 6, kTwoDigits>(w, g, x, t, o, rows, valid);
          break;
        case 7:
          Int8Tile<P, 7, kTwoDigits>(w, g, x, t, o, rows, valid);
          break;
        default:
          Int8Tile<P, 8, kTwoDigits>(w, g, x, t, o, rows, valid);
          break;
      }
    }
  }
}

// 16 rows x NT tokens with fp32 activations. Each block's quants are converted to fp32 in
// registers: nibbles through a 16-entry permute table (vpermps reads only the low 4 bits of
// each index, so a shift is all the unpacking a nibble needs), kQ5_0's 5-bit codes through a
// 32-entry one (vpermt2ps, the low 5 bits), bytes by sign extension. kQ8F sums each 16-element
// half apart (one scale each).
template <Pack P, int NT>
KVSHARE_TARGET_AVX512 void F32Tile(const CpuWeight& w, int64_t g, const float* x, const float* xsum,
                                   int t0, float* out, int64_t ldo, int valid) {
  constexpr int kChains = NT == 1 ? 4 : (NT == 2 ? 2 : 1);  // independent fma chains per token
  constexpr int kHalves = P == Pack::kQ8F ? 2 : 1;
  const bool offsets = MayHaveOffsets(P) && (P != Pack::kQ8F || w.has_offsets());
  const int64_t cols = w.cols(), nb = w.blocks();
  const __m512 table = P == Pack::kQ4_0
                           ? _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7)
                           : _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 acc[NT];
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();

  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* qb = w.block_quants(g, b);
    PrefetchNextBlock(w, qb);
    __m512 d[2], m;
    LoadScales<P>(w, g, b, d, &m);
#pragma GCC unroll 2
    for (int h = 0; h < kHalves; ++h) {
      __m512 bacc[NT][kChains];
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
#pragma GCC unroll 4
        for (int c = 0; c < kChains; ++c) bacc[t][c] = _mm512_setzero_ps();
      }
      if constexpr (BytesForm(P)) {
#pragma GCC unroll 8
        for (int k = h * 8 / kHalves; k < (h + 1) * 8 / kHalves; ++k) {
          // Stored bytes are q + 128; xor back to q, then sign-extend byte e of each dword.
          const __m512i raw =
              _mm512_xor_si512(_mm512_load_si512(qb + 64 * k), _mm512_set1_epi8(-128));
#pragma GCC unroll 4
          for (int e = 0; e < 4; ++e) {
            const __m512 v = _mm512_cvtepi32_ps(
                _mm512_srai_epi32(e == 3 ? raw : _mm512_slli_epi32(raw, 24 - 8 * e), 24));
#pragma GCC unroll 8
            for (int t = 0; t < NT; ++t) {
              const __m512 xv = _mm512_set1_ps(x[(t0 + t) * cols + b * 32 + 4 * k + e]);
              bacc[t][e % kChains] = _mm512_fmadd_ps(v, xv, bacc[t][e % kChains]);
            }
          }
        }
      } else {
        // Each dword lane's byte e holds the codes of elements 4k + e (lo) and 16 + 4k + e (hi):
        // nibbles, or kQ5_0's 5-bit codes (then a 32-entry table: `below` for codes 0..15).
        const __m512 below =
            _mm512_setr_ps(-16, -15, -14, -13, -12, -11, -10, -9, -8, -7, -6, -5, -4, -3, -2, -1);
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          __m512i lo_codes, hi_codes;
          if constexpr (P == Pack::kQ5_0) {
            FiveBitChunk(qb, k, &lo_codes, &hi_codes);
          } else {
            lo_codes = _mm512_load_si512(qb + 64 * k);
            hi_codes = _mm512_srli_epi32(lo_codes, 4);
          }
#pragma GCC unroll 4
          for (int e = 0; e < 4; ++e) {
            const __m512i lo_index = e == 0 ? lo_codes : _mm512_srli_epi32(lo_codes, 8 * e);
            const __m512i hi_index = e == 0 ? hi_codes : _mm512_srli_epi32(hi_codes, 8 * e);
            __m512 lo, hi;
            if constexpr (P == Pack::kQ5_0) {
              lo = _mm512_permutex2var_ps(below, lo_index, table);
              hi = _mm512_permutex2var_ps(below, hi_index, table);
            } else {
              lo = _mm512_permutexvar_ps(lo_index, table);
              hi = _mm512_permutexvar_ps(hi_index, table);
            }
#pragma GCC unroll 8
            for (int t = 0; t < NT; ++t) {
              const float* xb = x + (t0 + t) * cols + b * 32;
              bacc[t][e % kChains] =
                  _mm512_fmadd_ps(lo, _mm512_set1_ps(xb[4 * k + e]), bacc[t][e % kChains]);
              bacc[t][(e + 1) % kChains] = _mm512_fmadd_ps(hi, _mm512_set1_ps(xb[16 + 4 * k + e]),
                                                           bacc[t][(e + 1) % kChains]);
            }
          }
        }
      }
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        __m512 sum = bacc[t][0];
#pragma GCC unroll 4
        for (int c = 1; c < kChains; ++c) sum = _mm512_add_ps(sum, bacc[t][c]);
        acc[t] = _mm512_fmadd_ps(sum, d[h], acc[t]);
      }
    }
    if (offsets) {
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        acc[t] = _mm512_fmadd_ps(m, _mm512_set1_ps(xsum[(t0 + t) * nb + b]), acc[t]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < NT; ++t) StoreRows(out + t * ldo, acc[t], valid);
}

template <Pack P>
KVSHARE_TARGET_AVX512 void F32GroupsT(const CpuWeight& w, const float* x, const float* xsum, int t0,
                                      int t1, int64_t g0, int64_t g1, float* out) {
  const int64_t rows = w.rows();
  for (int64_t g = g0; g < g1; ++g) {
    const int valid = static_cast<int>(std::min<int64_t>(kGroupRows, rows - g * kGroupRows));
    for (int t = t0; t < t1; t += 4) {
      float* o = out + t * rows + g * kGroupRows;
      switch (std::min(4, t1 - t)) {
        case 1:
          F32Tile<P, 1>(w, g, x, xsum, t, o, rows, valid);
          break;
        case 2:
          F32Tile<P, 2>(w, g, x, xsum, t, o, rows, valid);
          break;
        case 3:
          F32Tile<P, 3>(w, g, x, xsum, t, o, rows, valid);
          break;
        default:
          F32Tile<P, 4>(w, g, x, xsum, t, o, rows, valid);
          break;
      }
    }
  }
}

// 16 weights of row w at column c, in fp32 (mask: the valid lanes of a tail).
template <DType T>
KVSHARE_TARGET_AVX512 inline __m512 LoadWeights(const void* row, int64_t c, __mmask16 mask) {
  if constexpr (T == DType::kF32) {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(row) + c);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(row) + c);
    if constexpr (T == DType::kF16) {
      return _mm512_cvtph_ps(h);
    } else {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
  }
}

// R rows x 1 token: R independent fma chains over the columns, then one horizontal sum each.
template <DType T, int R>
KVSHARE_TARGET_AVX512 void DenseTile(const CpuWeight& w, const float* x, int64_t r, float* out) {
  const Tensor& tensor = w.tensor();
  const int64_t cols = tensor.cols();
  const void* row[R];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) row[i] = tensor.row_data(r + i);
  __m512 acc[R];
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    const __m512 xv = _mm512_loadu_ps(x + c);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
      acc[i] = _mm512_fmadd_ps(LoadWeights<T>(row[i], c, 0xffff), xv, acc[i]);
  }
  if (c < cols) {
    const __mmask16 mask = static_cast<__mmask16>((1u << (cols - c)) - 1);
    const __m512 xv = _mm512_maskz_loadu_ps(mask, x + c);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i)
      acc[i] = _mm512_fmadd_ps(LoadWeights<T>(row[i], c, mask), xv, acc[i]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < R; ++i) out[i] = _mm512_reduce_add_ps(acc[i]);
}

template <DType T>
KVSHARE_TARGET_AVX512 void DenseRowsT(const CpuWeight& w, const float* x, int t0, int t1,
                                      int64_t r0, int64_t r1, float* out) {
  const int64_t rows = w.rows(), cols = w.cols();
  float tmp[4];
  for (int64_t r = r0; r < r1; r += 4) {
    for (int t = t0; t < t1; ++t) {
      if (r + 4 <= r1) {
        DenseTile<T, 4>(w, x + t * cols, r, tmp);
        std::memcpy(out + t * rows + r, tmp, sizeof(tmp));
      } else {
        for (int64_t i = r; i < r1; ++i) DenseTile<T, 1>(w, x + t * cols, i, out + t * rows + i);
      }
    }
  }
}

}  // namespace

KVSHARE_TARGET_AVX512 void QuantizeActivations(const float* x, int64_t cols,
                                               const QuantizedActivations& out) {
  const __m512 sign_off = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < cols / 32; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + 32 * b);
    const __m512 v1 = _mm512_loadu_ps(x + 32 * b + 16);
    const float amax = _mm512_reduce_max_ps(
        _mm512_max_ps(_mm512_and_ps(v0, sign_off), _mm512_and_ps(v1, sign_off)));
    const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    const __m512 iv = _mm512_set1_ps(inv);
    const __m512 steps0 = _mm512_mul_ps(v0, iv), steps1 = _mm512_mul_ps(v1, iv);
    const __m512i q0 = _mm512_cvtps_epi32(steps0);  // round to nearest even
    const __m512i q1 = _mm512_cvtps_epi32(steps1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q + 32 * b), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q + 32 * b + 16), _mm512_cvtsepi32_epi8(q1));
    if (out.q2 != nullptr) {  // the second digit: what rounding to q left, in 1/256 steps
      const __m512 base = _mm512_set1_ps(kSecondDigitBase);
      const __m512i hi = _mm512_set1_epi32(kSecondDigitMax),
                    lo = _mm512_set1_epi32(-kSecondDigitMax);
      const __m512i r0 = _mm512_max_epi32(
          lo, _mm512_min_epi32(hi, _mm512_cvtps_epi32(_mm512_mul_ps(
                                       _mm512_sub_ps(steps0, _mm512_cvtepi32_ps(q0)), base))));
      const __m512i r1 = _mm512_max_epi32(
          lo, _mm512_min_epi32(hi, _mm512_cvtps_epi32(_mm512_mul_ps(
                                       _mm512_sub_ps(steps1, _mm512_cvtepi32_ps(q1)), base))));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q2 + 32 * b), _mm512_cvtsepi32_epi8(r0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q2 + 32 * b + 16), _mm512_cvtsepi32_epi8(r1));
      out.q2sum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(r0, r1));
    }
    out.scale[b] = amax / 127.0f;
    out.qsum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    // The sum in QuantizeActivationsRef's order: lanes l + l+16, then halving.
    const __m512 s16 = _mm512_add_ps(v0, v1);
    const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(s16), _mm512_extractf32x8_ps(s16, 1));
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    out.sum[b] = _mm_cvtss_f32(s1);
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

}  // namespace kvshare::cpu::avx512
