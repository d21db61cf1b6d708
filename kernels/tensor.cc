#include "kernels/tensor.h"

#include "absl/strings/str_format.h"

namespace kvshare {

const DTypeInfo& GetDTypeInfo(DType type) {
  static const DTypeInfo kF32{"F32", 1, 4};
  static const DTypeInfo kF16{"F16", 1, 2};
  static const DTypeInfo kBF16{"BF16", 1, 2};
  static const DTypeInfo kQ8_0{"Q8_0", 32, 34};
  static const DTypeInfo kQ4_0{"Q4_0", 32, 18};
  static const DTypeInfo kQ4_1{"Q4_1", 32, 20};
  switch (type) {
    case DType::kF32:
      return kF32;
    case DType::kF16:
      return kF16;
    case DType::kBF16:
      return kBF16;
    case DType::kQ8_0:
      return kQ8_0;
    case DType::kQ4_0:
      return kQ4_0;
    case DType::kQ4_1:
      return kQ4_1;
  }
  return kF32;  // unreachable for values produced by DTypeFromGgml
}

absl::StatusOr<DType> DTypeFromGgml(uint32_t ggml_type) {
  switch (ggml_type) {
    case 0:
      return DType::kF32;
    case 1:
      return DType::kF16;
    case 2:
      return DType::kQ4_0;
    case 3:
      return DType::kQ4_1;
    case 8:
      return DType::kQ8_0;
    case 30:
      return DType::kBF16;
    default:
      return absl::InvalidArgumentError(absl::StrFormat(
          "tensor type %u is not supported (supported: F32=0, F16=1, Q4_0=2, Q4_1=3, Q8_0=8, "
          "BF16=30)",
          ggml_type));
  }
}

size_t StorageBytes(DType type, int64_t n_elems) {
  const DTypeInfo& info = GetDTypeInfo(type);
  return static_cast<size_t>(n_elems / info.block_elems) * info.block_bytes;
}

}  // namespace kvshare
