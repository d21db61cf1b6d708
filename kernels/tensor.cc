#include "kernels/tensor.h"

#include "absl/strings/str_format.h"

namespace kvshare {
namespace {

// GGML's type names by id (ggml.h; ids 4, 5 and 31..33, 36..38 were retired and are empty).
constexpr const char* kGgmlNames[] = {
    "F32",     "F16",    "Q4_0",    "Q4_1",  "",       "",      "Q5_0",  "Q5_1",
    "Q8_0",    "Q8_1",   "Q2_K",    "Q3_K",  "Q4_K",   "Q5_K",  "Q6_K",  "Q8_K",
    "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
    "I8",      "I16",    "I32",     "I64",   "F64",    "IQ1_M", "BF16",  "",
    "",        "",       "TQ1_0",   "TQ2_0", "",       "",      "",      "MXFP4"};

}  // namespace

const char* GgmlTypeName(uint32_t ggml_type) {
  if (ggml_type >= sizeof(kGgmlNames) / sizeof(kGgmlNames[0])) return "";
  return kGgmlNames[ggml_type];
}

const DTypeInfo& GetDTypeInfo(DType type) {
  static const DTypeInfo kF32{"F32", 1, 4};
  static const DTypeInfo kF16{"F16", 1, 2};
  static const DTypeInfo kBF16{"BF16", 1, 2};
  static const DTypeInfo kQ8_0{"Q8_0", 32, 34};
  static const DTypeInfo kQ4_0{"Q4_0", 32, 18};
  static const DTypeInfo kQ4_1{"Q4_1", 32, 20};
  static const DTypeInfo kQ5_0{"Q5_0", 32, 22};
  static const DTypeInfo kQ5_1{"Q5_1", 32, 24};
  static const DTypeInfo kQ3_K{"Q3_K", 256, 110};
  static const DTypeInfo kQ4_K{"Q4_K", 256, 144};
  static const DTypeInfo kQ5_K{"Q5_K", 256, 176};
  static const DTypeInfo kQ6_K{"Q6_K", 256, 210};
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
    case DType::kQ5_0:
      return kQ5_0;
    case DType::kQ5_1:
      return kQ5_1;
    case DType::kQ3_K:
      return kQ3_K;
    case DType::kQ4_K:
      return kQ4_K;
    case DType::kQ5_K:
      return kQ5_K;
    case DType::kQ6_K:
      return kQ6_K;
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
    case 6:
      return DType::kQ5_0;
    case 7:
      return DType::kQ5_1;
    case 8:
      return DType::kQ8_0;
    case 11:
      return DType::kQ3_K;
    case 12:
      return DType::kQ4_K;
    case 13:
      return DType::kQ5_K;
    case 14:
      return DType::kQ6_K;
    case 30:
      return DType::kBF16;
    default:
      break;
  }
  // "type 99" for ids GGML does not define, "type IQ4_XS (23)" for GGML types not supported.
  constexpr const char* kSupported =
      "supported: F32=0, F16=1, Q4_0=2, Q4_1=3, Q5_0=6, Q5_1=7, Q8_0=8, Q3_K=11, Q4_K=12, "
      "Q5_K=13, Q6_K=14, BF16=30";
  const char* name = GgmlTypeName(ggml_type);
  if (*name == '\0') {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor type %u is not supported (%s)", ggml_type, kSupported));
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("tensor type %s (%u) is not supported (%s)", name, ggml_type, kSupported));
}

size_t StorageBytes(DType type, int64_t n_elems) {
  const DTypeInfo& info = GetDTypeInfo(type);
  return static_cast<size_t>(n_elems / info.block_elems) * info.block_bytes;
}

}  // namespace kvshare
