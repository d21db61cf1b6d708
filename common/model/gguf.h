// GGUF v3 reader: header, metadata key/values, tensor table, alignment.
//
// Parse() validates everything it reads against the buffer's bounds: a wrong magic, an
// unsupported version, a file truncated at any byte, an unknown value or tensor type, a
// tensor whose data lies outside the file, or sizes that overflow give an
// InvalidArgument/DataLoss status naming what and where (byte offset). It never reads out of
// bounds. The GgufFile does not own the bytes; they must outlive it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace kvshare {

// GGUF metadata value types (the file's type ids).
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

struct GgufValue {
  GgufType type = GgufType::kU8;
  GgufType array_type = GgufType::kU8;  // element type when type == kArray
  // Scalars widen to int64 (every integer type but U64), uint64 (U64) or double (F32/F64).
  // Arrays of those integer types and of F32/F64 hold their elements widened the same way in
  // one vector (8 bytes each, not a GgufValue's 48: a 262,144-token vocabulary's scores and
  // token types take 4 MB, not 25); arrays of anything else (U64, BOOL, STRING, ARRAY) hold
  // GgufValues.
  std::variant<int64_t, uint64_t, double, bool, std::string, std::vector<GgufValue>,
               std::vector<int64_t>, std::vector<double>>
      value;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // GGML order (shape[0] innermost)
  DType type = DType::kF32;
  uint64_t offset = 0;  // absolute offset of the data in the file
  uint64_t nbytes = 0;
};

class GgufFile {
 public:
  static absl::StatusOr<GgufFile> Parse(const uint8_t* data, size_t size);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  // Absolute offset of the data section (the tensor table's end, aligned up).
  uint64_t data_offset() const { return data_offset_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(const std::string& name) const;
  const GgufValue* Find(const std::string& key) const;

  // Typed getters: NotFound when absent, InvalidArgument naming the key on a type mismatch.
  absl::StatusOr<int64_t> GetInt(const std::string& key) const;   // any integer type
  absl::StatusOr<double> GetFloat(const std::string& key) const;  // F32/F64 (or integer)
  absl::StatusOr<bool> GetBool(const std::string& key) const;
  absl::StatusOr<std::string> GetString(const std::string& key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(const std::string& key) const;
  absl::StatusOr<std::vector<double>> GetFloatArray(const std::string& key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(const std::string& key) const;

  // A view of a tensor's bytes inside `file_data` (the buffer given to Parse).
  Tensor TensorView(const GgufTensorInfo& info, const uint8_t* file_data) const;

 private:
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;  // name -> index in tensors_
};

}  // namespace kvshare
