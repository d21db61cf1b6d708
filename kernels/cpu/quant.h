// Block formats of the quantized types (see kernels/tensor.h) and their plain conversions.
// These are the reference definitions: the fast kernels are tested against them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/tensor.h"

namespace kvshare::cpu {

constexpr int kQuantBlock = 32;  // elements per block of every quantized type

struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[32];
};
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[16];  // element j in the low nibble of byte j, element j + 16 in the high one
};
struct BlockQ4_1 {
  uint16_t d;
  uint16_t m;  // fp16 offset
  uint8_t qs[16];
};
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];   // bit e of the little-endian uint32: element e's high bit
  uint8_t qs[16];  // low 4 bits, as in Q4_0
};
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[16];
};
constexpr int kSuperBlock = 256;  // elements per K-quant block
struct BlockQ3_K {
  uint8_t hmask[32];   // high bits
  uint8_t qs[64];      // low 2 bits
  uint8_t scales[12];  // 16 6-bit scales
  uint16_t d;
};
struct BlockQ4_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];  // 8 6-bit scales and 8 6-bit mins
  uint8_t qs[128];
};
struct BlockQ5_K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
struct BlockQ6_K {
  uint8_t ql[128];  // low 4 bits
  uint8_t qh[64];   // high 2 bits
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 &&
                  sizeof(BlockQ5_0) == 22 && sizeof(BlockQ5_1) == 24 && sizeof(BlockQ3_K) == 110 &&
                  sizeof(BlockQ4_K) == 144 && sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210,
              "GGUF block sizes");

// Converts `n` elements of `type` starting at `src` (a row start, or any block boundary) to
// fp32. n must be a multiple of the type's block size. This is the reference decoder, written
// from the GGML formats with llama.cpp's order of float operations (e.g. Q4_K: (d * sc) * q -
// dmin * m), so a repacked weight can reproduce it bit for bit.
void DequantizeRow(DType type, const void* src, int64_t n, float* dst);

// Element block b (32 elements) of a row of a 5-bit or K-quant type as small integers, two
// per-16 scales and an offset: x[j] = scale[j / 16] * q[j] + offset, equal bit for bit to
// DequantizeRow (offset is 0 for the types without one; Q5_0 and Q5_1 give scale[0] ==
// scale[1]). The repacking at load (packed_weight.cc) is built on it.
//   type   q range    scales        offset
//   Q5_0   -16..15    d             0
//   Q5_1   0..31      d             m
//   Q3_K   -4..3      d * (sc-32)   0
//   Q4_K   0..15      d * sc        -(dmin * m)
//   Q5_K   0..31      d * sc        -(dmin * m)
//   Q6_K   -32..31    d * sc        0
struct Block32 {
  int8_t q[32];
  float scale[2];
  float offset;
};
bool HasBlock32Form(DType type);
void DecodeBlock32(DType type, const void* row, int64_t b, Block32* out);

// Stores `n` floats as `type`, the way llama.cpp's reference quantizers do (Q8_0, Q4_0: scale
// from the element of largest magnitude; Q4_1, Q5_1: min/max; Q5_0 as Q4_0 with 16 levels).
// Used to build test and bench weights. K-quants have no quantizer here (tests build them
// from random blocks and real files): dst is left as it is.
void QuantizeRow(DType type, const float* src, int64_t n, void* dst);

// One row of activations quantized to int8 per 32-block, for the integer dot-product kernels:
// x[c] ~= scale[b] * q[c] (b = c / 32), scale = max|x_b| / 127, q = round-to-even(x * 127/max).
// `sum[b]` is the exact fp32 sum of the block's x (Q4_1 needs it for its offset m), and
// `qsum[b]` the sum of the block's q (Q4_0 and Q8_0 kernels need it for their zero point).
//
// A second int8 digit (when q2 is set; MatMulOptions Activations::kInt8x2): what rounding to q
// left of x * 127/max, in steps of 1/256: q2[c] = round-to-even(256 (x[c] * 127/max - q[c]))
// clamped to [-127, 127] (|x * 127/max - q| <= 1/2, so only values within 1/512 of a half step
// are clamped), and x[c] ~= scale (q[c] + q2[c] / 256) within max / 65024, max / 32512 where
// clamped (plus fp32 rounding): about 16 bits per block where one digit carries 8. The base is
// a power of two so that the kernels join the two digits' integer dots as (dot << 8) + dot2.
// The clamp keeps q2 within AVX2's sign trick (+-127). `q2sum[b]` is the sum of the block's q2.
constexpr int kSecondDigitBits = 8;
constexpr float kSecondDigitBase = 1 << kSecondDigitBits;
constexpr int kSecondDigitMax = 127;
struct QuantizedActivations {
  int8_t* q;                 // [n]
  float* scale;              // [n / 32]
  float* sum;                // [n / 32]
  int32_t* qsum;             // [n / 32]
  int8_t* q2 = nullptr;      // [n], or null: one digit
  int32_t* q2sum = nullptr;  // [n / 32]
};
void QuantizeActivationsRef(const float* x, int64_t n, const QuantizedActivations& out);

}  // namespace kvshare::cpu
