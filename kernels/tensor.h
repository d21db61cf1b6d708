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
// In Q4_x blocks, byte j holds element j in its low nibble and element j + 16 in its high one.
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
  kQ8_0 = 8,
  kBF16 = 30,
};

struct DTypeInfo {
  const char* name;
  int block_elems;  // elements per block
  int block_bytes;  // bytes per block
};

// Info for a supported type.
const DTypeInfo& GetDTypeInfo(DType type);

// Maps a GGML type id to a supported DType; names the id when it is unknown or unsupported.
absl::StatusOr<DType> DTypeFromGgml(uint32_t ggml_type);

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
