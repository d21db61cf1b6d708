// Scalar IEEE half and bfloat16 conversions (exact; fp32 -> narrow rounds to nearest even).
// The SIMD kernels convert with F16C / AVX-512 instructions, which give the same results.
#pragma once

#include <cstdint>
#include <cstring>

namespace kvshare::cpu {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float Fp16ToFp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t man = h & 0x3ff;
  if (exp == 0x1f) return BitsFloat(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return BitsFloat(sign | ((exp + 112) << 23) | (man << 13));
  // Zero or subnormal: man * 2^-24, exact in fp32.
  const float mag = static_cast<float>(man) * (1.0f / 16777216.0f);
  return sign ? -mag : mag;
}

inline uint16_t Fp32ToFp16(float f) {
  const uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf or nan (keep nan quiet)
    return sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0);
  }
  if (ax >= 0x477ff000u) return sign | 0x7c00;  // rounds to >= 65520: overflow to inf
  if (ax < 0x38800000u) {
    // Result is subnormal (or zero): round |f| * 2^24 to an integer, nearest even.
    if (ax < 0x33000000u) return sign;              // below half the smallest subnormal
    const uint32_t e = ax >> 23;                    // 102..112
    const uint32_t m = (ax & 0x7fffff) | 0x800000;  // 24-bit significand
    const int shift = 126 - static_cast<int>(e);    // value = m * 2^(e-150); want * 2^24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return sign | static_cast<uint16_t>(q);
  }
  // Normal: rebias the exponent and round the 13 dropped bits to nearest even.
  uint32_t r = ax - 0x38000000u;  // exponent 127 -> 15
  r += 0xfff + ((r >> 13) & 1);
  return sign | static_cast<uint16_t>(r >> 13);
}

inline float Bf16ToFp32(uint16_t h) { return BitsFloat(static_cast<uint32_t>(h) << 16); }

inline uint16_t Fp32ToBf16(float f) {
  const uint32_t x = FloatBits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // nan
  return static_cast<uint16_t>((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

}  // namespace kvshare::cpu
