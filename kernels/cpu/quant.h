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
static_assert(sizeof(BlockQ8_0) == 34 && sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20,
              "GGUF block sizes");

// Converts `n` elements of `type` starting at `src` (a row start, or any block boundary) to
// fp32. n must be a multiple of the type's block size.
void DequantizeRow(DType type, const void* src, int64_t n, float* dst);

// Stores `n` floats as `type`, the way llama.cpp's reference quantizers do (Q8_0, Q4_0: scale
// from the element of largest magnitude; Q4_1: min/max). Used to build test and bench weights.
void QuantizeRow(DType type, const float* src, int64_t n, void* dst);

// One row of activations quantized to int8 per 32-block, for the integer dot-product kernels:
// x[c] ~= scale[b] * q[c] (b = c / 32), scale = max|x_b| / 127, q = round-to-even(x * 127/max).
// `sum[b]` is the exact fp32 sum of the block's x (Q4_1 needs it for its offset m), and
// `qsum[b]` the sum of the block's q (Q4_0 and Q8_0 kernels need it for their zero point).
struct QuantizedActivations {
  int8_t* q;      // [n]
  float* scale;   // [n / 32]
  float* sum;     // [n / 32]
  int32_t* qsum;  // [n / 32]
};
void QuantizeActivationsRef(const float* x, int64_t n, const QuantizedActivations& out);

}  // namespace kvshare::cpu
