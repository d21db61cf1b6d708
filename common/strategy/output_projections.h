// OutputProjections: replacement attention output projections W_o' for some layers of a
// strategy (issue 18). A sharing layer attends over another layer's cache; refitting its W_o
// so that its attention output after W_o' matches what its own K/V would have given recovers
// much of the loss at no inference cost (same shape as W_o: [dim][n_heads * head_dim]).
//
// Storage: one blob, little-endian, the layers' matrices one after another in `layers` order,
// each [rows = dim][cols = n_heads * head_dim] row-major (row r is output feature r, as a
// GGUF/llama2.c weight tensor), in F16 (IEEE half) or F32. Content hash: SHA-256 of
//   "kvshare-projections-v1 <type> <rows> <cols> <l0,l1,...>\n" + blob bytes,
// which becomes part of the strategy's content id (sharing_strategy.h). Bytes per layer:
// rows * cols * (2 for F16, 4 for F32): SmolLM2-135M (576 x 576) 663,552 B in F16; a 7B
// Llama shape (4096 x 4096) 33,554,432 B in F16.
//
// Immutable once built; safe to share between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/tensor.h"

namespace kvshare {

class OutputProjections {
 public:
  // From f32 matrices, one per layer ([rows][cols] row-major each), stored as `type` (kF16 or
  // kF32). InvalidArgument for another type, layers not strictly ascending or < 1, a matrix of
  // the wrong size, or a non-finite value.
  static absl::StatusOr<std::shared_ptr<const OutputProjections>> FromF32(
      DType type, int rows, int cols, std::vector<int> layers,
      const std::vector<std::vector<float>>& matrices);
  // From a stored blob with its header fields; `expected_sha256` (when non-empty) must match.
  // DataLoss for a blob of the wrong size or hash (a damaged or substituted file).
  static absl::StatusOr<std::shared_ptr<const OutputProjections>> FromBlob(
      DType type, int rows, int cols, std::vector<int> layers, std::string blob,
      const std::string& expected_sha256);

  DType type() const { return type_; }
  int rows() const { return rows_; }
  int cols() const { return cols_; }
  const std::vector<int>& layers() const { return layers_; }
  // Index of `layer` in layers(), or -1.
  int IndexOf(int layer) const;
  // A view of layer layers()[i]'s matrix (points into this object).
  Tensor LayerTensor(int i) const;
  // Layer layers()[i]'s matrix in f32, [rows][cols].
  std::vector<float> LayerF32(int i) const;
  const std::string& blob() const { return blob_; }
  size_t bytes_per_layer() const;
  const std::string& sha256() const { return sha256_; }
  // The blob's file name beside a strategy file: "projections-<sha256>.bin".
  std::string BlobFileName() const;

 private:
  OutputProjections() = default;
  void ComputeHash();
  DType type_ = DType::kF16;
  int rows_ = 0, cols_ = 0;
  std::vector<int> layers_;
  std::string blob_;
  std::string sha256_;
};

// "f16" / "f32" <-> DType (only those two).
const char* ProjectionTypeName(DType type);
absl::StatusOr<DType> ParseProjectionType(const std::string& name);

}  // namespace kvshare
