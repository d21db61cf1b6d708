// AVX-512 attention over int4 and int4a pools read in place (kv_chunk.h Int4Runs): K's
// per-channel scale and min folded into the query once per block, V's per-group ones into the
// softmax weights, the nibbles (int4a: K's bit planes) unpacked as they are read.
#include <algorithm>
#include <cstring>

#include "kernels/cpu/attention_avx512_common.h"
#include "kernels/cpu/kv_chunk.h"

namespace kvshare::cpu::avx512 {
namespace {

// int4 pools (head_dim = 16 * HD16, a multiple of 32), read in place run by run (kv_chunk.h
// Int4Runs). In a quantised block k_c = u_c s_c + m_c (K per channel), so
//   q.k = sum_c (q_c s_c) u_c + sum_c q_c m_c,
// with q s and q.m computed once per run and row; v_c = u_c s_g + m_g (V per position and
// 32-channel group g), so
//   sum_p e_p v_pc = sum_p (e_p s_pg) u_pc + sum_p e_p m_pg,
// the second sum one scalar per group. The f16 tail slots are converted lane by lane as they are
// read.
template <int HD16>
KVSHARE_TARGET_AVX512 void AttendChunkInt4T(const ChunkRows& a) {
  constexpr int kGroups = HD16 / 2;
  const KvGeometry& geo = *a.geometry;
  const int hd = 16 * HD16, len = a.p1 - a.p0;
  const int64_t c = geo.kv_dim(), head = static_cast<int64_t>(a.kv_head) * hd;
  const int64_t v_groups = c / kKvInt4Group, head_group = head / kKvInt4Group;
  const KvBlockLayout lay(geo);
  Int4Run runs[kMaxInt4Runs];
  const int n_runs = Int4Runs(a, runs);
  const __m512 scale = _mm512_set1_ps(a.scale);

  for (int r = 0; r < a.n_rows; ++r) {
    const int n_pos = std::min(a.p1, a.limit[r] + 1) - a.p0;  // row r sees [0, n_pos)
    float* s = a.scores + static_cast<int64_t>(r) * len;
    __m512 q[HD16];
#pragma GCC unroll 8
    for (int cc = 0; cc < HD16; ++cc) q[cc] = _mm512_loadu_ps(a.q[r] + 16 * cc);
    // Scores, run by run, 16 positions at a time (past the run's end: its last row, ignored and
    // overwritten by the next run or the next row).
    for (int ri = 0; ri < n_runs && runs[ri].i0 < n_pos; ++ri) {
      const Int4Run& run = runs[ri];
      const int n = std::min(run.n, n_pos - run.i0);
      if (run.block == nullptr) {
        for (int j0 = 0; j0 < n; j0 += 16) {
          __m512 acc[16];
#pragma GCC unroll 16
          for (int j = 0; j < 16; ++j) {
            const uint16_t* k = run.f16_k + (run.row0 + std::min(j0 + j, n - 1)) * c;
            __m512 d = _mm512_mul_ps(q[0], LoadHalf16(k));
#pragma GCC unroll 8
            for (int cc = 1; cc < HD16; ++cc)
              d = _mm512_fmadd_ps(q[cc], LoadHalf16(k + 16 * cc), d);
            acc[Slot(j)] = d;
          }
          _mm512_storeu_ps(s + run.i0 + j0, _mm512_mul_ps(Reduce16(acc), scale));
        }
        continue;
      }
      const auto* k_scale = reinterpret_cast<const uint16_t*>(run.block + lay.k_scale) + head;
      const auto* k_min = reinterpret_cast<const uint16_t*>(run.block + lay.k_min) + head;
      __m512 qs[HD16];
      __m512 qm = _mm512_setzero_ps();
#pragma GCC unroll 8
      for (int cc = 0; cc < HD16; ++cc) {
        qs[cc] = _mm512_mul_ps(q[cc], LoadHalf16(k_scale + 16 * cc));
        qm = _mm512_fmadd_ps(q[cc], LoadHalf16(k_min + 16 * cc), qm);
      }
      const __m512 bias = _mm512_set1_ps(_mm512_reduce_add_ps(qm));
      const uint8_t* k_rows = run.block + lay.k + head / 2;
      for (int j0 = 0; j0 < n; j0 += 16) {
        __m512 acc[16];
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j) {
          const uint8_t* k = k_rows + (run.row0 + std::min(j0 + j, n - 1)) * c / 2;
          __m512 d = _mm512_setzero_ps();
#pragma GCC unroll 4
          for (int g = 0; g < kGroups; ++g) {
            __m512 lo, hi;
            Unpack32(k + g * (kKvInt4Group / 2), &lo, &hi);
            d = _mm512_fmadd_ps(qs[2 * g], lo, d);
            d = _mm512_fmadd_ps(qs[2 * g + 1], hi, d);
          }
          acc[Slot(j)] = d;
        }
        _mm512_storeu_ps(s + run.i0 + j0, _mm512_mul_ps(_mm512_add_ps(Reduce16(acc), bias), scale));
      }
    }
    SoftmaxRow(s, n_pos, &a.m[r], &a.l[r]);
    // o = sum_p e_p V_p; per group, the min terms sum in vb.
    __m512 o[HD16];
    float vb[kGroups];
#pragma GCC unroll 8
    for (int cc = 0; cc < HD16; ++cc) o[cc] = _mm512_setzero_ps();
    for (int g = 0; g < kGroups; ++g) vb[g] = 0.0f;
    for (int ri = 0; ri < n_runs && runs[ri].i0 < n_pos; ++ri) {
      const Int4Run& run = runs[ri];
      const int n = std::min(run.n, n_pos - run.i0);
      const float* e = s + run.i0;
      if (run.block == nullptr) {
        for (int j = 0; j < n; ++j) {
          const uint16_t* v = run.f16_v + (run.row0 + j) * c;
          const __m512 w = _mm512_set1_ps(e[j]);
#pragma GCC unroll 8
          for (int cc = 0; cc < HD16; ++cc)
            o[cc] = _mm512_fmadd_ps(w, LoadHalf16(v + 16 * cc), o[cc]);
        }
        continue;
      }
      const auto* v_scale = reinterpret_cast<const uint16_t*>(run.block + lay.v_scale) + head_group;
      const auto* v_min = reinterpret_cast<const uint16_t*>(run.block + lay.v_min) + head_group;
      const uint8_t* v_rows = run.block + lay.v + head / 2;
      for (int j = 0; j < n; ++j) {
        const int64_t row = run.row0 + j;
        const uint8_t* v = v_rows + row * c / 2;
#pragma GCC unroll 4
        for (int g = 0; g < kGroups; ++g) {
          const float w = e[j] * _cvtsh_ss(v_scale[row * v_groups + g]);
          vb[g] += e[j] * _cvtsh_ss(v_min[row * v_groups + g]);
          __m512 lo, hi;
          Unpack32(v + g * (kKvInt4Group / 2), &lo, &hi);
          o[2 * g] = _mm512_fmadd_ps(_mm512_set1_ps(w), lo, o[2 * g]);
          o[2 * g + 1] = _mm512_fmadd_ps(_mm512_set1_ps(w), hi, o[2 * g + 1]);
        }
      }
    }
    float* out = a.o + static_cast<int64_t>(r) * hd;
#pragma GCC unroll 8
    for (int cc = 0; cc < HD16; ++cc) {
      _mm512_storeu_ps(out + 16 * cc, _mm512_add_ps(o[cc], _mm512_set1_ps(vb[cc / 2])));
    }
  }
}

// int4a's K in a quantised block (kernels/kv_type.h): channel c holds b_c bit planes, k_c =
// u_c s_c + m_c with u_c = sum_k 2^k bit_k, so as for int4
//   q.k = sum_c (q_c s_c) u_c + sum_c q_c m_c.
// The run's codes are built once, channel-major, as floats: u[c][t] for the run's positions,
// 64 at a time as bytes (one 64-bit mask per plane, each set bit adding 2^k to its byte; the
// codes are below 256), then widened. Then per tile of NR rows the scores of 16 positions are
// one fma per channel against the broadcast q_c s_c, with no horizontal sums.
// `u` holds hd x S floats, S = the run's positions rounded up to 16 (lanes past the run hold
// codes from the bits after it: finite, and never stored).
KVSHARE_TARGET_AVX512 inline void UnpackAllocatedK(const KvGeometry& geo, const Int4Run& run,
                                                   int64_t head, int stride, float* u) {
  const int hd = geo.head_dim, plane_bytes = geo.block_tokens / 8;
  const KvBlockLayout lay(geo);
  const uint8_t* widths = run.block + lay.k_bits;
  const uint8_t* plane = AllocatedKPlanes(geo, lay, run.block, head);
  const int shift = run.row0 % 8;
  for (int j = 0; j < hd; ++j) {
    const int64_t ch = head + j;
    const int b = AllocatedKWidth(widths, ch);
    float* dst = u + static_cast<int64_t>(j) * stride;
    for (int t0 = 0; t0 < run.n; t0 += 64) {
      // Bits row0 + t0 ... + 63 of each plane: 9 bytes from the one holding the first (the
      // block continues past its last plane by V's T x C / 2 >= 128 bytes, so the read stays
      // inside it).
      const uint8_t* at = plane + (run.row0 + t0) / 8;
      __m512i x = _mm512_setzero_si512();
      for (int k = 0; k < b; ++k) {
        uint64_t bits;
        std::memcpy(&bits, at + k * plane_bytes, 8);
        if (shift != 0) {
          bits = (bits >> shift) | (uint64_t{at[k * plane_bytes + 8]} << (64 - shift));
        }
        x = _mm512_mask_add_epi8(x, _cvtu64_mask64(bits), x, _mm512_set1_epi8(char(1 << k)));
      }
      alignas(64) uint8_t codes[64];
      _mm512_store_si512(codes, x);
      for (int t = 0; t < 64 && t0 + t < run.n; t += 16) {
        const __m128i part = _mm_load_si128(reinterpret_cast<const __m128i*>(codes + t));
        _mm512_storeu_ps(dst + t0 + t, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(part)));
      }
    }
    plane += b * plane_bytes;
  }
}

// Scores of rows [r0, r0 + NR) for a quantised int4a run, from UnpackAllocatedK's u.
template <int HD16, int NR>
KVSHARE_TARGET_AVX512 void AllocatedKScoresT(const ChunkRows& a, const Int4Run& run, int r0,
                                             const int* n, const float* u, int stride,
                                             float* const* s) {
  constexpr int hd = 16 * HD16;
  const KvBlockLayout lay(*a.geometry);
  const int64_t head = static_cast<int64_t>(a.kv_head) * hd;
  const auto* k_scale = reinterpret_cast<const uint16_t*>(run.block + lay.k_scale) + head;
  const auto* k_min = reinterpret_cast<const uint16_t*>(run.block + lay.k_min) + head;
  alignas(64) float qs[NR][hd];
  __m512 bias[NR];
  int n_max = 0;
  for (int r = 0; r < NR; ++r) {
    __m512 qm = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int cc = 0; cc < HD16; ++cc) {
      const __m512 q = _mm512_loadu_ps(a.q[r0 + r] + 16 * cc);
      _mm512_store_ps(qs[r] + 16 * cc, _mm512_mul_ps(q, LoadHalf16(k_scale + 16 * cc)));
      qm = _mm512_fmadd_ps(q, LoadHalf16(k_min + 16 * cc), qm);
    }
    bias[r] = _mm512_set1_ps(_mm512_reduce_add_ps(qm));
    n_max = std::max(n_max, n[r]);
  }
  const __m512 scale = _mm512_set1_ps(a.scale);
  for (int t0 = 0; t0 < n_max; t0 += 16) {
    // Two chains per row (even and odd channels).
    __m512 acc0[NR], acc1[NR];
    for (int r = 0; r < NR; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
    const float* col = u + t0;
#pragma GCC unroll 4
    for (int c = 0; c < hd; c += 2) {
      const __m512 u0 = _mm512_loadu_ps(col + static_cast<int64_t>(c) * stride);
      const __m512 u1 = _mm512_loadu_ps(col + static_cast<int64_t>(c + 1) * stride);
      for (int r = 0; r < NR; ++r) {
        acc0[r] = _mm512_fmadd_ps(_mm512_set1_ps(qs[r][c]), u0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(_mm512_set1_ps(qs[r][c + 1]), u1, acc1[r]);
      }
    }
    for (int r = 0; r < NR; ++r) {
      if (t0 >= n[r]) continue;
      const __m512 d = _mm512_add_ps(_mm512_add_ps(acc0[r], acc1[r]), bias[r]);
      _mm512_mask_storeu_ps(s[r] + t0, TailMask(n[r] - t0), _mm512_mul_ps(d, scale));
    }
  }
}

// AttendChunkInt4T for several rows (GQA heads, prefill queries) sharing the chunk: run by run,
// the run's nibbles are unpacked once into the call's scratch as unscaled floats u (at most
// block_tokens x head_dim of them, L1-resident), then every row folds its scales in as above
// while reading u like an f32 row. Scores of all rows first (rows at a stride of whole 16-lane
// groups, so no row's stores reach another's), then each row's softmax, then V run by run with
// o accumulated in a.o.
//
// kAllocated: int4a pools (the same V; K from bit planes, AllocatedKScoresT).
template <int HD16, bool kAllocated>
KVSHARE_TARGET_AVX512 void AttendChunkInt4RowsT(const ChunkRows& a) {
  constexpr int kGroups = HD16 / 2;
  const KvGeometry& geo = *a.geometry;
  const int hd = 16 * HD16, len = a.p1 - a.p0, stride = (len + 15) & ~15;
  const int64_t c = geo.kv_dim(), head = static_cast<int64_t>(a.kv_head) * hd;
  const int64_t v_groups = c / kKvInt4Group, head_group = head / kKvInt4Group;
  const KvBlockLayout lay(geo);
  Int4Run runs[kMaxInt4Runs];
  const int n_runs = Int4Runs(a, runs);
  const __m512 scale = _mm512_set1_ps(a.scale);
  float* u = a.kv_scratch;  // a run's unpacked nibbles, [run.n][hd]
  auto n_pos = [&](int r) { return std::min(a.p1, a.limit[r] + 1) - a.p0; };
  auto unpack_run = [&](const uint8_t* rows, const Int4Run& run) KVSHARE_TARGET_AVX512 {
    for (int j = 0; j < run.n; ++j) {
      const uint8_t* src = rows + (run.row0 + j) * c / 2;
      float* dst = u + static_cast<int64_t>(j) * hd;
#pragma GCC unroll 4
      for (int g = 0; g < kGroups; ++g) {
        __m512 lo, hi;
        Unpack32(src + g * (kKvInt4Group / 2), &lo, &hi);
        _mm512_storeu_ps(dst + 32 * g, lo);
        _mm512_storeu_ps(dst + 32 * g + 16, hi);
      }
    }
  };

  for (int ri = 0; ri < n_runs; ++ri) {
    const Int4Run& run = runs[ri];
    if (run.block == nullptr) {
      for (int r = 0; r < a.n_rows; ++r) {
        const int n = std::min(run.n, n_pos(r) - run.i0);
        float* s = a.scores + static_cast<int64_t>(r) * stride + run.i0;
        __m512 q[HD16];
#pragma GCC unroll 8
        for (int cc = 0; cc < HD16; ++cc) q[cc] = _mm512_loadu_ps(a.q[r] + 16 * cc);
        for (int j0 = 0; j0 < n; j0 += 16) {
          __m512 acc[16];
#pragma GCC unroll 16
          for (int j = 0; j < 16; ++j) {
            const uint16_t* k = run.f16_k + (run.row0 + std::min(j0 + j, n - 1)) * c;
            __m512 d = _mm512_mul_ps(q[0], LoadHalf16(k));
#pragma GCC unroll 8
            for (int cc = 1; cc < HD16; ++cc) {
              d = _mm512_fmadd_ps(q[cc], LoadHalf16(k + 16 * cc), d);
            }
            acc[Slot(j)] = d;
          }
          _mm512_mask_storeu_ps(s + j0, TailMask(n - j0), _mm512_mul_ps(Reduce16(acc), scale));
        }
      }
      continue;
    }
    if (kAllocated) {
      UnpackAllocatedK(geo, run, head, (run.n + 15) & ~15, u);
      for (int r0 = 0; r0 < a.n_rows; r0 += 4) {
        int n[4];
        float* s[4];
        const int nr = std::min(4, a.n_rows - r0);
        for (int r = 0; r < nr; ++r) {
          n[r] = std::min(run.n, n_pos(r0 + r) - run.i0);
          s[r] = a.scores + static_cast<int64_t>(r0 + r) * stride + run.i0;
        }
        switch (nr) {
          case 1:
            AllocatedKScoresT<HD16, 1>(a, run, r0, n, u, (run.n + 15) & ~15, s);
            break;
          case 2:
            AllocatedKScoresT<HD16, 2>(a, run, r0, n, u, (run.n + 15) & ~15, s);
            break;
          case 3:
            AllocatedKScoresT<HD16, 3>(a, run, r0, n, u, (run.n + 15) & ~15, s);
            break;
          default:
            AllocatedKScoresT<HD16, 4>(a, run, r0, n, u, (run.n + 15) & ~15, s);
            break;
        }
      }
      continue;
    }
    unpack_run(run.block + lay.k + head / 2, run);
    const auto* k_scale = reinterpret_cast<const uint16_t*>(run.block + lay.k_scale) + head;
    const auto* k_min = reinterpret_cast<const uint16_t*>(run.block + lay.k_min) + head;
    __m512 ks[HD16], km[HD16];
#pragma GCC unroll 8
    for (int cc = 0; cc < HD16; ++cc) {
      ks[cc] = LoadHalf16(k_scale + 16 * cc);
      km[cc] = LoadHalf16(k_min + 16 * cc);
    }
    for (int r = 0; r < a.n_rows; ++r) {
      const int n = std::min(run.n, n_pos(r) - run.i0);
      float* s = a.scores + static_cast<int64_t>(r) * stride + run.i0;
      __m512 qs[HD16];
      __m512 qm = _mm512_setzero_ps();
#pragma GCC unroll 8
      for (int cc = 0; cc < HD16; ++cc) {
        const __m512 q = _mm512_loadu_ps(a.q[r] + 16 * cc);
        qs[cc] = _mm512_mul_ps(q, ks[cc]);
        qm = _mm512_fmadd_ps(q, km[cc], qm);
      }
      const __m512 bias = _mm512_set1_ps(_mm512_reduce_add_ps(qm));
      for (int j0 = 0; j0 < n; j0 += 16) {
        __m512 acc[16];
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j) {
          const float* k = u + static_cast<int64_t>(std::min(j0 + j, n - 1)) * hd;
          __m512 d = _mm512_mul_ps(qs[0], _mm512_loadu_ps(k));
#pragma GCC unroll 8
          for (int cc = 1; cc < HD16; ++cc) {
            d = _mm512_fmadd_ps(qs[cc], _mm512_loadu_ps(k + 16 * cc), d);
          }
          acc[Slot(j)] = d;
        }
        _mm512_mask_storeu_ps(s + j0, TailMask(n - j0),
                              _mm512_mul_ps(_mm512_add_ps(Reduce16(acc), bias), scale));
      }
    }
  }
  for (int r = 0; r < a.n_rows; ++r) {
    SoftmaxRow(a.scores + static_cast<int64_t>(r) * stride, n_pos(r), &a.m[r], &a.l[r]);
    std::fill(a.o + static_cast<int64_t>(r) * hd, a.o + static_cast<int64_t>(r + 1) * hd, 0.0f);
  }
  for (int ri = 0; ri < n_runs; ++ri) {
    const Int4Run& run = runs[ri];
    const bool quantised = run.block != nullptr;
    // Per run: V's scales and mins as floats, group-major ([g][j]), for every row.
    alignas(64) float vs_f[kGroups][kMaxChunk + 16], vm_f[kGroups][kMaxChunk + 16];
    if (quantised) {
      unpack_run(run.block + lay.v + head / 2, run);
      const auto* v_scale = reinterpret_cast<const uint16_t*>(run.block + lay.v_scale) + head_group;
      const auto* v_min = reinterpret_cast<const uint16_t*>(run.block + lay.v_min) + head_group;
      for (int j = 0; j < run.n; ++j) {
        const int64_t at = (run.row0 + j) * v_groups;
        for (int g = 0; g < kGroups; ++g) {
          vs_f[g][j] = _cvtsh_ss(v_scale[at + g]);
          vm_f[g][j] = _cvtsh_ss(v_min[at + g]);
        }
      }
    }
    for (int r = 0; r < a.n_rows; ++r) {
      const int n = std::min(run.n, n_pos(r) - run.i0);
      if (n <= 0) continue;
      const float* e = a.scores + static_cast<int64_t>(r) * stride + run.i0;
      float* out = a.o + static_cast<int64_t>(r) * hd;
      __m512 o0[HD16], o1[HD16];
#pragma GCC unroll 8
      for (int cc = 0; cc < HD16; ++cc) {
        o0[cc] = _mm512_loadu_ps(out + 16 * cc);
        o1[cc] = _mm512_setzero_ps();
      }
      if (!quantised) {
        for (int j = 0; j < n; ++j) {
          const uint16_t* v = run.f16_v + (run.row0 + j) * c;
          const __m512 w = _mm512_set1_ps(e[j]);
#pragma GCC unroll 8
          for (int cc = 0; cc < HD16; ++cc) {
            o0[cc] = _mm512_fmadd_ps(w, LoadHalf16(v + 16 * cc), o0[cc]);
          }
        }
#pragma GCC unroll 8
        for (int cc = 0; cc < HD16; ++cc) _mm512_storeu_ps(out + 16 * cc, o0[cc]);
        continue;
      }
      // w[g][j] = e_j s_jg, and vb[g] = sum_j e_j m_jg, 16 positions at a time.
      alignas(64) float w[kGroups][kMaxChunk + 16];
      __m512 vb[kGroups];
      for (int g = 0; g < kGroups; ++g) vb[g] = _mm512_setzero_ps();
      for (int j0 = 0; j0 < n; j0 += 16) {
        const __mmask16 k = TailMask(n - j0);  // lanes past n: e, s and m all read as 0
        const __m512 ej = _mm512_maskz_loadu_ps(k, e + j0);
        for (int g = 0; g < kGroups; ++g) {
          _mm512_store_ps(&w[g][j0], _mm512_mul_ps(ej, _mm512_maskz_load_ps(k, &vs_f[g][j0])));
          vb[g] = _mm512_fmadd_ps(ej, _mm512_maskz_load_ps(k, &vm_f[g][j0]), vb[g]);
        }
      }
      // Positions in pairs, even ones into o0 and odd ones into o1 (two fma chains).
      int j = 0;
      for (; j + 1 < n; j += 2) {
        const float* v0 = u + static_cast<int64_t>(j) * hd;
        const float* v1 = v0 + hd;
#pragma GCC unroll 4
        for (int g = 0; g < kGroups; ++g) {
          const __m512 w0 = _mm512_set1_ps(w[g][j]), w1 = _mm512_set1_ps(w[g][j + 1]);
          o0[2 * g] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(v0 + 32 * g), o0[2 * g]);
          o0[2 * g + 1] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(v0 + 32 * g + 16), o0[2 * g + 1]);
          o1[2 * g] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(v1 + 32 * g), o1[2 * g]);
          o1[2 * g + 1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(v1 + 32 * g + 16), o1[2 * g + 1]);
        }
      }
      if (j < n) {
        const float* v0 = u + static_cast<int64_t>(j) * hd;
#pragma GCC unroll 4
        for (int g = 0; g < kGroups; ++g) {
          const __m512 w0 = _mm512_set1_ps(w[g][j]);
          o0[2 * g] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(v0 + 32 * g), o0[2 * g]);
          o0[2 * g + 1] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(v0 + 32 * g + 16), o0[2 * g + 1]);
        }
      }
#pragma GCC unroll 8
      for (int cc = 0; cc < HD16; ++cc) {
        const __m512 bias = _mm512_set1_ps(_mm512_reduce_add_ps(vb[cc / 2]));
        _mm512_storeu_ps(out + 16 * cc, _mm512_add_ps(_mm512_add_ps(o0[cc], o1[cc]), bias));
      }
    }
  }
}

// One head size: int4a always through the rows kernel (one row included), int4 through the
// single-row one when it can.
template <int HD16>
KVSHARE_TARGET_AVX512 void AttendInPlaceT(const ChunkRows& a) {
  if (a.geometry->type == KvType::kInt4A) {
    AttendChunkInt4RowsT<HD16, true>(a);
  } else if (a.n_rows == 1) {
    AttendChunkInt4T<HD16>(a);
  } else {
    AttendChunkInt4RowsT<HD16, false>(a);
  }
}

}  // namespace

bool AttendChunkInPlace(const ChunkRows& a) {
  const KvType type = a.geometry->type;
  if ((type != KvType::kInt4 && type != KvType::kInt4A) || !a.int4_in_place) return false;
  switch (a.geometry->head_dim / 16) {  // head_dim % 32 == 0 for both types
    case 2:
      AttendInPlaceT<2>(a);
      return true;
    case 4:
      AttendInPlaceT<4>(a);
      return true;
    case 6:
      AttendInPlaceT<6>(a);
      return true;
    case 8:
      AttendInPlaceT<8>(a);
      return true;
    default:
      return false;  // wider heads (Gemma 3's 256): gathered
  }
}

}  // namespace kvshare::cpu::avx512
