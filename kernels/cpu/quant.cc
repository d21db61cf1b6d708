#include "kernels/cpu/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/half.h"

namespace kvshare::cpu {

namespace {

uint32_t LoadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;  // GGUF is little-endian, as is every CPU this builds for
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes. Bytes
// 0..3 hold scales 0..3 and bytes 4..7 mins 0..3 in their low 6 bits; sub-blocks 4..7 take their
// low 4 bits from the nibbles of bytes 8..11 and their top 2 bits from the top of bytes 0..7.
void ScaleMinK4(const uint8_t* s, int j, int* sc, int* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q3_K: the 6-bit scale i (0..15): low 4 bits in the nibbles of bytes 0..7 (scales 0..7 low
// nibbles, 8..15 high), top 2 bits in bytes 8..11 (scale i: byte 8 + i % 4, bits 2 (i / 4)).
int ScaleK3(const uint8_t* s, int i) {
  const int low = i < 8 ? (s[i] & 0x0f) : (s[i - 8] >> 4);
  const int high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
  return low | (high << 4);
}

// Element e (0..255) of a K-quant super-block as its integer q and sub-block index. These
// are the bit layouts of the GGML formats; DequantizeRow and DecodeBlock32 both use them.
int Q3KQuant(const BlockQ3_K& b, int e) {
  const int half = e / 128, j = (e % 128) / 32, l = e % 32;  // l: 0..31 within the pair
  const int low = (b.qs[32 * half + l] >> (2 * j)) & 3;
  const bool high = (b.hmask[l] >> (4 * half + j)) & 1;
  return low - (high ? 0 : 4);
}
int Q4KQuant(const BlockQ4_K& b, int e) {
  const int pair = e / 64, l = e % 32;
  const uint8_t byte = b.qs[32 * pair + l];
  return (e % 64) < 32 ? (byte & 0x0f) : (byte >> 4);
}
int Q5KQuant(const BlockQ5_K& b, int e) {
  const int pair = e / 64, l = e % 32, sub = e / 32;
  const uint8_t byte = b.qs[32 * pair + l];
  const int low = (e % 64) < 32 ? (byte & 0x0f) : (byte >> 4);
  return low | (((b.qh[l] >> sub) & 1) << 4);
}
// Q6_K: each 128-element half uses 64 ql bytes and 32 qh bytes; its four 32-element quarters k
// take the low (k = 0, 1) or high (k = 2, 3) nibbles of ql[l + 32 (k % 2)] and bits 2k..2k+1
// of qh[l]. The scale of element e is scales[e / 16].
int Q6KQuant(const BlockQ6_K& b, int e) {
  const int half = e / 128, k = (e % 128) / 32, l = e % 32;
  const uint8_t lo = b.ql[64 * half + l + 32 * (k % 2)];
  const int low = k < 2 ? (lo & 0x0f) : (lo >> 4);
  const int high = (b.qh[32 * half + l] >> (2 * k)) & 3;
  return (low | (high << 4)) - 32;
}
int Q5Quant(const uint8_t* qh, const uint8_t* qs, int j) {
  const int low = j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
  return low | (((LoadU32(qh) >> j) & 1) << 4);
}

}  // namespace

void DequantizeRow(DType type, const void* src, int64_t n, float* dst) {
  switch (type) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kF16: {
      const uint16_t* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = Fp16ToFp32(h[i]);
      return;
    }
    case DType::kBF16: {
      const uint16_t* h = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToFp32(h[i]);
      return;
    }
    case DType::kQ8_0: {
      const BlockQ8_0* b = static_cast<const BlockQ8_0*>(src);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float d = Fp16ToFp32(b[i].d);
        for (int j = 0; j < 32; ++j) dst[i * 32 + j] = d * b[i].qs[j];
      }
      return;
    }
    case DType::kQ4_0: {
      const BlockQ4_0* b = static_cast<const BlockQ4_0*>(src);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float d = Fp16ToFp32(b[i].d);
        for (int j = 0; j < 16; ++j) {
          dst[i * 32 + j] = d * ((b[i].qs[j] & 0x0f) - 8);
          dst[i * 32 + j + 16] = d * ((b[i].qs[j] >> 4) - 8);
        }
      }
      return;
    }
    case DType::kQ4_1: {
      const BlockQ4_1* b = static_cast<const BlockQ4_1*>(src);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float d = Fp16ToFp32(b[i].d);
        const float m = Fp16ToFp32(b[i].m);
        for (int j = 0; j < 16; ++j) {
          dst[i * 32 + j] = d * (b[i].qs[j] & 0x0f) + m;
          dst[i * 32 + j + 16] = d * (b[i].qs[j] >> 4) + m;
        }
      }
      return;
    }
    case DType::kQ5_0: {
      const BlockQ5_0* b = static_cast<const BlockQ5_0*>(src);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float d = Fp16ToFp32(b[i].d);
        for (int j = 0; j < 32; ++j) dst[i * 32 + j] = (Q5Quant(b[i].qh, b[i].qs, j) - 16) * d;
      }
      return;
    }
    case DType::kQ5_1: {
      const BlockQ5_1* b = static_cast<const BlockQ5_1*>(src);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float d = Fp16ToFp32(b[i].d);
        const float m = Fp16ToFp32(b[i].m);
        for (int j = 0; j < 32; ++j) dst[i * 32 + j] = Q5Quant(b[i].qh, b[i].qs, j) * d + m;
      }
      return;
    }
    case DType::kQ3_K: {
      const BlockQ3_K* b = static_cast<const BlockQ3_K*>(src);
      for (int64_t i = 0; i < n / kSuperBlock; ++i) {
        const float d = Fp16ToFp32(b[i].d);
        for (int e = 0; e < kSuperBlock; ++e) {
          const float dl = d * (ScaleK3(b[i].scales, e / 16) - 32);
          dst[i * kSuperBlock + e] = dl * Q3KQuant(b[i], e);
        }
      }
      return;
    }
    case DType::kQ4_K:
    case DType::kQ5_K: {
      const int64_t bytes = GetDTypeInfo(type).block_bytes;
      for (int64_t i = 0; i < n / kSuperBlock; ++i) {
        const uint8_t* blk = static_cast<const uint8_t*>(src) + i * bytes;
        // Both start with f16 d, f16 dmin, scales[12].
        const BlockQ4_K* b4 = reinterpret_cast<const BlockQ4_K*>(blk);
        const BlockQ5_K* b5 = reinterpret_cast<const BlockQ5_K*>(blk);
        const float d = Fp16ToFp32(b4->d), dmin = Fp16ToFp32(b4->dmin);
        for (int e = 0; e < kSuperBlock; ++e) {
          int sc, m;
          ScaleMinK4(b4->scales, e / 32, &sc, &m);
          const float d1 = d * sc, m1 = dmin * m;
          const int q = type == DType::kQ4_K ? Q4KQuant(*b4, e) : Q5KQuant(*b5, e);
          dst[i * kSuperBlock + e] = d1 * q - m1;
        }
      }
      return;
    }
    case DType::kQ6_K: {
      const BlockQ6_K* b = static_cast<const BlockQ6_K*>(src);
      for (int64_t i = 0; i < n / kSuperBlock; ++i) {
        const float d = Fp16ToFp32(b[i].d);
        for (int e = 0; e < kSuperBlock; ++e) {
          dst[i * kSuperBlock + e] = d * b[i].scales[e / 16] * Q6KQuant(b[i], e);
        }
      }
      return;
    }
  }
}

bool HasBlock32Form(DType type) {
  switch (type) {
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ3_K:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return true;
    default:
      return false;
  }
}

void DecodeBlock32(DType type, const void* row, int64_t b, Block32* out) {
  const uint8_t* bytes = static_cast<const uint8_t*>(row);
  out->offset = 0.0f;
  switch (type) {
    case DType::kQ5_0:
    case DType::kQ5_1: {
      const bool q51 = type == DType::kQ5_1;
      const uint8_t* blk = bytes + b * (q51 ? sizeof(BlockQ5_1) : sizeof(BlockQ5_0));
      uint16_t d, m = 0;
      std::memcpy(&d, blk, 2);
      if (q51) std::memcpy(&m, blk + 2, 2);
      const uint8_t* qh = blk + (q51 ? 4 : 2);
      for (int j = 0; j < 32; ++j)
        out->q[j] = static_cast<int8_t>(Q5Quant(qh, qh + 4, j) - (q51 ? 0 : 16));
      out->scale[0] = out->scale[1] = Fp16ToFp32(d);
      if (q51) out->offset = Fp16ToFp32(m);
      return;
    }
    case DType::kQ3_K: {
      const BlockQ3_K& blk = static_cast<const BlockQ3_K*>(row)[b / 8];
      const int e0 = static_cast<int>(b % 8) * 32;
      const float d = Fp16ToFp32(blk.d);
      for (int j = 0; j < 32; ++j) out->q[j] = static_cast<int8_t>(Q3KQuant(blk, e0 + j));
      for (int h = 0; h < 2; ++h) out->scale[h] = d * (ScaleK3(blk.scales, e0 / 16 + h) - 32);
      return;
    }
    case DType::kQ4_K:
    case DType::kQ5_K: {
      const int64_t block_bytes = GetDTypeInfo(type).block_bytes;
      const uint8_t* blk = bytes + (b / 8) * block_bytes;
      const BlockQ4_K* b4 = reinterpret_cast<const BlockQ4_K*>(blk);
      const BlockQ5_K* b5 = reinterpret_cast<const BlockQ5_K*>(blk);
      const int sub = static_cast<int>(b % 8);
      int sc, m;
      ScaleMinK4(b4->scales, sub, &sc, &m);
      for (int j = 0; j < 32; ++j) {
        out->q[j] = static_cast<int8_t>(type == DType::kQ4_K ? Q4KQuant(*b4, sub * 32 + j)
                                                             : Q5KQuant(*b5, sub * 32 + j));
      }
      out->scale[0] = out->scale[1] = Fp16ToFp32(b4->d) * sc;
      out->offset = -(Fp16ToFp32(b4->dmin) * m);
      return;
    }
    case DType::kQ6_K: {
      const BlockQ6_K& blk = static_cast<const BlockQ6_K*>(row)[b / 8];
      const int e0 = static_cast<int>(b % 8) * 32;
      const float d = Fp16ToFp32(blk.d);
      for (int j = 0; j < 32; ++j) out->q[j] = static_cast<int8_t>(Q6KQuant(blk, e0 + j));
      for (int h = 0; h < 2; ++h) out->scale[h] = d * blk.scales[e0 / 16 + h];
      return;
    }
    default:
      std::memset(out, 0, sizeof(*out));
      return;
  }
}

void QuantizeRow(DType type, const float* src, int64_t n, void* dst) {
  switch (type) {
    case DType::kF32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case DType::kF16: {
      uint16_t* h = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) h[i] = Fp32ToFp16(src[i]);
      return;
    }
    case DType::kBF16: {
      uint16_t* h = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) h[i] = Fp32ToBf16(src[i]);
      return;
    }
    case DType::kQ8_0: {
      BlockQ8_0* b = static_cast<BlockQ8_0*>(dst);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float* x = src + i * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = Fp32ToFp16(d);
        for (int j = 0; j < 32; ++j) b[i].qs[j] = static_cast<int8_t>(std::nearbyint(x[j] * id));
      }
      return;
    }
    case DType::kQ4_0: {
      BlockQ4_0* b = static_cast<BlockQ4_0*>(dst);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float* x = src + i * 32;
        float amax = 0.0f, max = 0.0f;  // signed value of largest magnitude
        for (int j = 0; j < 32; ++j) {
          if (std::fabs(x[j]) > amax) {
            amax = std::fabs(x[j]);
            max = x[j];
          }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = Fp32ToFp16(d);
        for (int j = 0; j < 16; ++j) {
          const int lo = std::min(15, static_cast<int>(x[j] * id + 8.5f));
          const int hi = std::min(15, static_cast<int>(x[j + 16] * id + 8.5f));
          b[i].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
        }
      }
      return;
    }
    case DType::kQ4_1: {
      BlockQ4_1* b = static_cast<BlockQ4_1*>(dst);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float* x = src + i * 32;
        float lo = x[0], hi = x[0];
        for (int j = 1; j < 32; ++j) {
          lo = std::fmin(lo, x[j]);
          hi = std::fmax(hi, x[j]);
        }
        const float d = (hi - lo) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = Fp32ToFp16(d);
        b[i].m = Fp32ToFp16(lo);
        for (int j = 0; j < 16; ++j) {
          const int q0 = std::min(15, static_cast<int>((x[j] - lo) * id + 0.5f));
          const int q1 = std::min(15, static_cast<int>((x[j + 16] - lo) * id + 0.5f));
          b[i].qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
      }
      return;
    }
    case DType::kQ5_0: {
      BlockQ5_0* b = static_cast<BlockQ5_0*>(dst);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float* x = src + i * 32;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; ++j) {
          if (std::fabs(x[j]) > amax) {
            amax = std::fabs(x[j]);
            max = x[j];
          }
        }
        const float d = max / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = Fp32ToFp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
          const int lo = std::min(31, static_cast<int>(x[j] * id + 16.5f));
          const int hi = std::min(31, static_cast<int>(x[j + 16] * id + 16.5f));
          b[i].qs[j] = static_cast<uint8_t>((lo & 15) | ((hi & 15) << 4));
          qh |= static_cast<uint32_t>(lo >> 4) << j | static_cast<uint32_t>(hi >> 4) << (j + 16);
        }
        std::memcpy(b[i].qh, &qh, 4);
      }
      return;
    }
    case DType::kQ5_1: {
      BlockQ5_1* b = static_cast<BlockQ5_1*>(dst);
      for (int64_t i = 0; i < n / 32; ++i) {
        const float* x = src + i * 32;
        float lo = x[0], hi = x[0];
        for (int j = 1; j < 32; ++j) {
          lo = std::fmin(lo, x[j]);
          hi = std::fmax(hi, x[j]);
        }
        const float d = (hi - lo) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        b[i].d = Fp32ToFp16(d);
        b[i].m = Fp32ToFp16(lo);
        uint32_t qh = 0;
        for (int j = 0; j < 16; ++j) {
          const int q0 = std::min(31, static_cast<int>((x[j] - lo) * id + 0.5f));
          const int q1 = std::min(31, static_cast<int>((x[j + 16] - lo) * id + 0.5f));
          b[i].qs[j] = static_cast<uint8_t>((q0 & 15) | ((q1 & 15) << 4));
          qh |= static_cast<uint32_t>(q0 >> 4) << j | static_cast<uint32_t>(q1 >> 4) << (j + 16);
        }
        std::memcpy(b[i].qh, &qh, 4);
      }
      return;
    }
    case DType::kQ3_K:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return;  // no quantizer (see quant.h)
  }
}

void QuantizeActivationsRef(const float* x, int64_t n, const QuantizedActivations& out) {
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* xb = x + b * 32;
    float amax = 0.0f;
    float sum = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
    const float scale = amax / 127.0f;
    const float inv = amax != 0.0f ? 127.0f / amax : 0.0f;
    int32_t qsum = 0, q2sum = 0;
    for (int j = 0; j < 32; ++j) {
      const float steps = xb[j] * inv;
      const int q = static_cast<int>(std::nearbyint(steps));
      out.q[b * 32 + j] = static_cast<int8_t>(q);
      qsum += q;
      if (out.q2 != nullptr) {
        // steps - q is exact in fp32 (|steps - q| <= 1/2 and q is steps rounded).
        const int q2 = std::clamp(
            static_cast<int>(std::nearbyint((steps - static_cast<float>(q)) * kSecondDigitBase)),
            -kSecondDigitMax, kSecondDigitMax);
        out.q2[b * 32 + j] = static_cast<int8_t>(q2);
        q2sum += q2;
      }
    }
    if (out.q2 != nullptr) out.q2sum[b] = q2sum;
    // The sum in a fixed order (pairwise over 16 lanes) so that the SIMD quantizer matches it
    // bit for bit: lane l sums elements l and l + 16, then the 16 lanes are reduced as a tree.
    float lane[16];
    for (int l = 0; l < 16; ++l) lane[l] = xb[l] + xb[l + 16];
    for (int w = 8; w >= 1; w /= 2) {
      for (int l = 0; l < w; ++l) lane[l] = lane[l] + lane[l + w];
    }
    sum = lane[0];
    out.scale[b] = scale;
    out.sum[b] = sum;
    out.qsum[b] = qsum;
  }
}

}  // namespace kvshare::cpu
