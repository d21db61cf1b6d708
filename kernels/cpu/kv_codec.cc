#include "kernels/cpu/kv_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/half.h"

namespace kvshare::cpu {

KvBlockLayout::KvBlockLayout(const KvGeometry& g) {
  const int64_t t = g.block_tokens, c = g.kv_dim(), h = g.n_kv_heads;
  k = 0;
  k_scale = v_scale = k_min = v_min = k_bits = 0;
  switch (g.type) {
    case KvType::kF32:
      v = t * c * 4;
      break;
    case KvType::kF16:
      v = t * c * 2;
      break;
    case KvType::kInt8:
      v = t * c;
      k_scale = 2 * t * c;
      v_scale = k_scale + t * h * 2;
      break;
    case KvType::kInt4:
      v = t * c / 2;
      k_scale = t * c;
      k_min = k_scale + c * 2;
      v_scale = k_min + c * 2;
      v_min = v_scale + t * (c / kKvInt4Group) * 2;
      break;
    case KvType::kInt4A:
      v = t * c / 2;
      k_bits = t * c;
      k_scale = k_bits + c / 2;
      k_min = k_scale + c * 2;
      v_scale = k_min + c * 2;
      v_min = v_scale + t * (c / kKvInt4Group) * 2;
      break;
    case KvType::kK4V3:
      v = t * c / 2;
      k_scale = v + t * (c / kKvV3Group) * kKvV3GroupBytes;
      k_min = k_scale + c * 2;
      v_scale = k_min + c * 2;
      v_min = v_scale + t * (c / kKvV3Group) * 2;
      break;
  }
}

void PackNibbles(const uint8_t* q, int n, uint8_t* packed) {
  for (int g = 0; g < n; g += kKvInt4Group) {
    for (int j = 0; j < kKvInt4Group / 2; ++j) {
      packed[g / 2 + j] = static_cast<uint8_t>(q[g + j] | (q[g + j + kKvInt4Group / 2] << 4));
    }
  }
}

void QuantizeInt8(const float* x, int n, int8_t* q, uint16_t* scale_f16) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  *scale_f16 = Fp32ToFp16(amax / 127.0f);
  const float s = Fp16ToFp32(*scale_f16);
  for (int i = 0; i < n; ++i) {
    const float r = s > 0.0f && std::isfinite(s) ? std::nearbyint(x[i] / s) : 0.0f;
    q[i] = static_cast<int8_t>(std::clamp(r, -127.0f, 127.0f));
  }
}

void Pack3Bits(const uint8_t* q, uint8_t* packed) {
  std::memset(packed, 0, kKvV3GroupBytes);
  for (int c = 0; c < kKvV3Group; ++c) {
    packed[c % 16] |= static_cast<uint8_t>((q[c] & 3) << (2 * (c / 16)));
    packed[16 + c % 8] |= static_cast<uint8_t>(((q[c] >> 2) & 1) << (c / 8));
  }
}

void QuantizeAsymmetric(const float* x, int n, int64_t stride, int max_code, uint8_t* q,
                        int64_t q_stride, uint16_t* scale_f16, uint16_t* min_f16) {
  float mn = INFINITY, mx = -INFINITY;
  for (int i = 0; i < n; ++i) {
    mn = std::min(mn, x[i * stride]);
    mx = std::max(mx, x[i * stride]);
  }
  *min_f16 = Fp32ToFp16(mn);
  const float top = static_cast<float>(max_code);
  *scale_f16 = Fp32ToFp16((mx - mn) / top);
  const float s = Fp16ToFp32(*scale_f16), m = Fp16ToFp32(*min_f16);
  for (int i = 0; i < n; ++i) {
    const float r = s > 0.0f && std::isfinite(s) ? std::nearbyint((x[i * stride] - m) / s) : 0.0f;
    q[i * q_stride] = static_cast<uint8_t>(std::clamp(r, 0.0f, top));
  }
}

void AllocateKBits(const double* cost, int head_dim, uint8_t* bits) {
  std::vector<double> left(cost, cost + head_dim);
  std::fill(bits, bits + head_dim, 0);
  for (int n = 0; n < kKvInt4AMeanBits * head_dim; ++n) {
    int best = -1;
    for (int ch = 0; ch < head_dim; ++ch) {
      if (bits[ch] < kKvInt4AMaxBits && (best < 0 || left[ch] > left[best])) best = ch;
    }
    ++bits[best];
    left[best] /= 4;
  }
}

namespace {

uint8_t* BlockAt(const KvGeometry& g, void* pool, const int32_t* table, int p) {
  return static_cast<uint8_t*>(pool) + table[p / g.block_tokens] * g.block_bytes();
}

// int4a's K of a full block (k: [T][C] as read from the f16 tail) into `block`: per head, the
// widths from AllocateKBits, then each channel over the block's positions in its width, its
// codes as bit planes.
void QuantizeAllocatedK(const KvGeometry& g, const float* k, uint8_t* block) {
  const int t = g.block_tokens, hd = g.head_dim;
  const int64_t c = g.kv_dim();
  const KvBlockLayout lay(g);
  auto* k_scale = reinterpret_cast<uint16_t*>(block + lay.k_scale);
  auto* k_min = reinterpret_cast<uint16_t*>(block + lay.k_min);
  std::vector<float> lo(c, INFINITY), hi(c, -INFINITY);
  for (int r = 0; r < t; ++r) {
    for (int64_t ch = 0; ch < c; ++ch) {
      lo[ch] = std::min(lo[ch], k[r * c + ch]);
      hi[ch] = std::max(hi[ch], k[r * c + ch]);
    }
  }
  std::vector<double> cost(hd);
  std::vector<uint8_t> bits(c), q(t);
  for (int h = 0; h < g.n_kv_heads; ++h) {
    for (int j = 0; j < hd; ++j) {
      const int64_t ch = int64_t(h) * hd + j;
      const double range = hi[ch] - lo[ch];
      cost[j] = (g.k_weights != nullptr ? double(g.k_weights[ch]) : 1.0) * range * range;
    }
    AllocateKBits(cost.data(), hd, &bits[int64_t(h) * hd]);
  }
  uint8_t* plane = block + lay.k;
  std::memset(plane, 0, t * c / 2);
  std::memset(block + lay.k_bits, 0, c / 2);
  for (int64_t ch = 0; ch < c; ++ch) {
    const int b = bits[ch];
    block[lay.k_bits + ch / 2] |= static_cast<uint8_t>(b << (4 * (ch % 2)));
    if (b == 0) {  // the midpoint of the range, as min with scale 0
      k_min[ch] = Fp32ToFp16(lo[ch] + (hi[ch] - lo[ch]) / 2);
      k_scale[ch] = 0;
      continue;
    }
    QuantizeAsymmetric(&k[ch], t, c, (1 << b) - 1, q.data(), 1, &k_scale[ch], &k_min[ch]);
    for (int j = 0; j < b; ++j, plane += t / 8) {
      for (int r = 0; r < t; ++r) {
        plane[r >> 3] |= static_cast<uint8_t>(((q[r] >> j) & 1) << (r & 7));
      }
    }
  }
}

// Quantises a full int4, int4a or k4v3 block from its f16 tail slot into `block`.
void QuantizeTailBlock(const KvGeometry& g, const uint16_t* slot, uint8_t* block) {
  const int t = g.block_tokens;
  const int64_t c = g.kv_dim();
  const KvBlockLayout lay(g);
  std::vector<float> k(t * c), v(t * c);
  for (int64_t i = 0; i < t * c; ++i) {
    k[i] = Fp16ToFp32(slot[i]);
    v[i] = Fp16ToFp32(slot[t * c + i]);
  }
  std::vector<uint8_t> qk(t * c), qv(t * c);
  auto* k_scale = reinterpret_cast<uint16_t*>(block + lay.k_scale);
  auto* k_min = reinterpret_cast<uint16_t*>(block + lay.k_min);
  auto* v_scale = reinterpret_cast<uint16_t*>(block + lay.v_scale);
  auto* v_min = reinterpret_cast<uint16_t*>(block + lay.v_min);
  if (g.type == KvType::kInt4A) {
    QuantizeAllocatedK(g, k.data(), block);
  } else {  // K: 4 bits per channel over the block's positions.
    for (int64_t ch = 0; ch < c; ++ch) {
      QuantizeAsymmetric(&k[ch], t, c, 15, &qk[ch], c, &k_scale[ch], &k_min[ch]);
    }
    for (int r = 0; r < t; ++r)
      PackNibbles(&qk[r * c], static_cast<int>(c), block + lay.k + r * c / 2);
  }
  // V: per position over groups of channels, 4 bits (int4) or 3 (k4v3).
  const bool v3 = g.type == KvType::kK4V3;
  const int group = v3 ? kKvV3Group : kKvInt4Group;
  const int64_t groups = c / group;
  for (int r = 0; r < t; ++r) {
    for (int64_t gi = 0; gi < groups; ++gi) {
      const int64_t off = r * c + gi * group;
      QuantizeAsymmetric(&v[off], group, 1, v3 ? 7 : 15, &qv[off], 1, &v_scale[r * groups + gi],
                         &v_min[r * groups + gi]);
      if (v3) Pack3Bits(&qv[off], block + lay.v + (r * groups + gi) * kKvV3GroupBytes);
    }
    if (!v3) PackNibbles(&qv[r * c], static_cast<int>(c), block + lay.v + r * c / 2);
  }
}

float Nibble(const uint8_t* row, int64_t ch) {
  const int64_t g = ch / kKvInt4Group, j = ch % kKvInt4Group;
  const uint8_t b = row[g * (kKvInt4Group / 2) + j % (kKvInt4Group / 2)];
  return static_cast<float>(j < kKvInt4Group / 2 ? (b & 15) : (b >> 4));
}

// int4a: k[kv_dim] = row r's K from the block's planes.
void LoadAllocatedK(const KvGeometry& g, const uint8_t* block, int r, float* k) {
  const KvBlockLayout lay(g);
  const auto* k_scale = reinterpret_cast<const uint16_t*>(block + lay.k_scale);
  const auto* k_min = reinterpret_cast<const uint16_t*>(block + lay.k_min);
  const uint8_t* plane = block + lay.k;
  for (int64_t ch = 0; ch < g.kv_dim(); ++ch) {
    const int b = (block[lay.k_bits + ch / 2] >> (4 * (ch % 2))) & 15;
    int code = 0;
    for (int j = 0; j < b; ++j, plane += g.block_tokens / 8) code |= PlaneBit(plane, r) << j;
    k[ch] = static_cast<float>(code) * Fp16ToFp32(k_scale[ch]) + Fp16ToFp32(k_min[ch]);
  }
}

}  // namespace

void StoreKv(const KvGeometry& g, void* pool, const int32_t* block_table, int start_pos, int n,
             const float* k, const float* v, void* tail) {
  const int64_t c = g.kv_dim();
  const int hd = g.head_dim;
  const KvBlockLayout lay(g);
  for (int t = 0; t < n; ++t) {
    const int p = start_pos + t, r = p % g.block_tokens;
    const float* kt = k + t * c;
    const float* vt = v + t * c;
    uint8_t* block = BlockAt(g, pool, block_table, p);
    switch (g.type) {
      case KvType::kF32:
        std::memcpy(block + lay.k + r * c * 4, kt, c * 4);
        std::memcpy(block + lay.v + r * c * 4, vt, c * 4);
        break;
      case KvType::kF16: {
        auto* kd = reinterpret_cast<uint16_t*>(block + lay.k) + r * c;
        auto* vd = reinterpret_cast<uint16_t*>(block + lay.v) + r * c;
        for (int64_t i = 0; i < c; ++i) {
          kd[i] = Fp32ToFp16(kt[i]);
          vd[i] = Fp32ToFp16(vt[i]);
        }
        break;
      }
      case KvType::kInt8: {
        auto* kq = reinterpret_cast<int8_t*>(block + lay.k) + r * c;
        auto* vq = reinterpret_cast<int8_t*>(block + lay.v) + r * c;
        auto* ks = reinterpret_cast<uint16_t*>(block + lay.k_scale) + r * g.n_kv_heads;
        auto* vs = reinterpret_cast<uint16_t*>(block + lay.v_scale) + r * g.n_kv_heads;
        for (int h = 0; h < g.n_kv_heads; ++h) {
          QuantizeInt8(kt + h * hd, hd, kq + h * hd, &ks[h]);
          QuantizeInt8(vt + h * hd, hd, vq + h * hd, &vs[h]);
        }
        break;
      }
      case KvType::kInt4:
      case KvType::kInt4A:
      case KvType::kK4V3: {  // block 0 in slot 0 for good, a later one in slot 1 until full
        const int b = p / g.block_tokens;
        auto* slot = static_cast<uint16_t*>(tail) + (b == 0 ? 0 : 2LL * g.block_tokens * c);
        uint16_t* tk = slot + r * c;
        uint16_t* tv = slot + (g.block_tokens + r) * c;
        for (int64_t i = 0; i < c; ++i) {
          tk[i] = Fp32ToFp16(kt[i]);
          tv[i] = Fp32ToFp16(vt[i]);
        }
        if (b > 0 && r == g.block_tokens - 1) QuantizeTailBlock(g, slot, block);
        break;
      }
    }
  }
}

void LoadKv(const KvGeometry& g, const void* pool, const int32_t* block_table, const void* tail,
            int stored, int p, float* k, float* v) {
  const int64_t c = g.kv_dim();
  const int hd = g.head_dim, r = p % g.block_tokens;
  const KvBlockLayout lay(g);
  const uint8_t* block = BlockAt(g, const_cast<void*>(pool), block_table, p);
  switch (g.type) {
    case KvType::kF32:
      std::memcpy(k, block + lay.k + r * c * 4, c * 4);
      std::memcpy(v, block + lay.v + r * c * 4, c * 4);
      return;
    case KvType::kF16: {
      auto* ks = reinterpret_cast<const uint16_t*>(block + lay.k) + r * c;
      auto* vs = reinterpret_cast<const uint16_t*>(block + lay.v) + r * c;
      for (int64_t i = 0; i < c; ++i) {
        k[i] = Fp16ToFp32(ks[i]);
        v[i] = Fp16ToFp32(vs[i]);
      }
      return;
    }
    case KvType::kInt8: {
      auto* kq = reinterpret_cast<const int8_t*>(block + lay.k) + r * c;
      auto* vq = reinterpret_cast<const int8_t*>(block + lay.v) + r * c;
      auto* ks = reinterpret_cast<const uint16_t*>(block + lay.k_scale) + r * g.n_kv_heads;
      auto* vs = reinterpret_cast<const uint16_t*>(block + lay.v_scale) + r * g.n_kv_heads;
      for (int64_t i = 0; i < c; ++i) {
        k[i] = kq[i] * Fp16ToFp32(ks[i / hd]);
        v[i] = vq[i] * Fp16ToFp32(vs[i / hd]);
      }
      return;
    }
    case KvType::kInt4:
    case KvType::kInt4A:
    case KvType::kK4V3: {
      if (const uint16_t* slot = TailSlot(g, tail, stored, p / g.block_tokens)) {
        const uint16_t* tk = slot + r * c;
        const uint16_t* tv = slot + (g.block_tokens + r) * c;
        for (int64_t i = 0; i < c; ++i) {
          k[i] = Fp16ToFp32(tk[i]);
          v[i] = Fp16ToFp32(tv[i]);
        }
        return;
      }
      if (g.type == KvType::kInt4A) LoadAllocatedK(g, block, r, k);
      const uint8_t* krow = block + lay.k + r * c / 2;
      auto* k_scale = reinterpret_cast<const uint16_t*>(block + lay.k_scale);
      auto* k_min = reinterpret_cast<const uint16_t*>(block + lay.k_min);
      const bool v3 = g.type == KvType::kK4V3;
      const int group = v3 ? kKvV3Group : kKvInt4Group;
      const int64_t groups = c / group;
      const uint8_t* vrow = block + lay.v + (v3 ? r * groups * kKvV3GroupBytes : r * c / 2);
      auto* v_scale = reinterpret_cast<const uint16_t*>(block + lay.v_scale) + r * groups;
      auto* v_min = reinterpret_cast<const uint16_t*>(block + lay.v_min) + r * groups;
      for (int64_t i = 0; i < c; ++i) {
        if (g.type != KvType::kInt4A) {
          k[i] = Nibble(krow, i) * Fp16ToFp32(k_scale[i]) + Fp16ToFp32(k_min[i]);
        }
        const int64_t gi = i / group;
        const float code =
            v3 ? static_cast<float>(Unpack3Bits(vrow + gi * kKvV3GroupBytes, int(i % group)))
               : Nibble(vrow, i);
        v[i] = code * Fp16ToFp32(v_scale[gi]) + Fp16ToFp32(v_min[gi]);
      }
      return;
    }
  }
}

}  // namespace kvshare::cpu
