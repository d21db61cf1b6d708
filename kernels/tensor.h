// Element types of stored weights and a non-owning view of a weight tensor.
//
// DType values equal the GGML type ids, so a GGUF tensor table maps straight onto them.
// Block layouts (what the bytes of one block hold), as in GGUF:
//   F32   1 elem,  4 bytes
//   F16   1 elem,  2 bytes (IEEE half)
//   BF16  1 elem,  2 bytes
//   Q8_0  32 elems, 34 bytes: f16 d, int8 q[32];          x = d * q
//   Q4_0  32 elems, 18 bytes: f16 d, uint8 qs[16];        x = d * (nibble - 8)
//   Q4_1  32 elems, 20 bytes: f16 d, f16 m, uint8 qs[16]; x = d * nibble + m
//   Q5_0  32 elems, 22 bytes: f16 d, uint8 qh[4], qs[16]; x = d * (q5 - 16)
//   Q5_1  32 elems, 24 bytes: f16 d, f16 m, qh[4], qs[16];  x = d * q5 + m
// In Q4_x / Q5_x blocks, byte j holds element j in its low nibble and element j + 16 in its
// high one; in Q5_x, bit e of the little-endian uint32 qh is element e's fifth (high) bit.
// K-quants: super-blocks of 256 elements made of sub-blocks with small integer scales:
//   Q3_K  110 bytes: hmask[32], qs[64] (2-bit low), scales[12] (6-bit per 16), f16 d
//   Q4_K  144 bytes: f16 d, f16 dmin, scales[12] (6-bit scale and min per 32), qs[128]
//                    x = d * sc * q4 - dmin * m
//   Q5_K  176 bytes: f16 d, f16 dmin, scales[12], qh[32], qs[128]; as Q4_K with a fifth bit
//   Q6_K  210 bytes: ql[128], qh[64], int8 scales[16] (per 16), f16 d; x = d * sc * (q6 - 32)
// (the bit orders are in kernels/cpu/quant.cc, whose decoders are the reference).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvshare {

enum class DType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

struct DTypeInfo {
  const char* name;
  int block_elems;  // elements per block
  int block_bytes;  // bytes per block
};

// Info for a supported type.
const DTypeInfo& GetDTypeInfo(DType type);

// Maps a GGML type id to a supported DType. An unsupported one is refused with its GGML name
// (e.g. "IQ4_XS (type 23) is not supported"), an id GGML does not define with the id.
absl::StatusOr<DType> DTypeFromGgml(uint32_t ggml_type);

// GGML's name of a type id ("Q4_K", "IQ2_XXS", ...), or "" for an id GGML does not define.
const char* GgmlTypeName(uint32_t ggml_type);

// Bytes of `n_elems` elements of `type`; n_elems must be a multiple of the block size.
size_t StorageBytes(DType type, int64_t n_elems);

// A weight tensor in host memory, in its stored type. Does not own `data`.
// shape is in GGML order: shape[0] is the innermost (contiguous) dimension, so a 2-D weight
// of shape {cols, rows} is `rows` rows of `cols` elements; row r is output feature r.
struct Tensor {
  std::string name;
  DType type = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;

  int64_t cols() const { return shape.empty() ? 0 : shape[0]; }
  int64_t rows() const {
    int64_t r = 1;
    for (size_t i = 1; i < shape.size(); ++i) r *= shape[i];
    return r;
  }
  int64_t elements() const { return cols() * rows(); }
  const uint8_t* row_data(int64_t r) const {
    return static_cast<const uint8_t*>(data) + r * StorageBytes(type, cols());
  }
};

}  // namespace kvshare
