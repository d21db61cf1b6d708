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
// Linear substitutes (a calibrated attention drop): a layer whose attention is dropped may carry
// a linear map of its normed input that stands in for the attention block's contribution to
// the residual stream, x += h M^T + b with h = RMSNorm(x) * attn_norm, M [rows][rows] and b
// [rows] (rows = dim). Heads that attend mostly to the current token or to a sink are close to
// linear in h; the map keeps what they add at no KV cost. Stored after the projections, each
// substitute its matrix then its bias, in the same type; the hash header then also names the
// substitute layers ("... <l0,l1,...> substitutes <s0,...>\n"), so blobs without substitutes
// keep their v1 hash. Bytes per substitute: (rows * rows + rows) * (2 or 4): SmolLM2 664,704 B
// in F16.
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

// A substitute's values in f32: matrix [rows][rows] row-major (row r is output feature r), bias
// [rows].
struct LinearSubstituteF32 {
  int layer = 0;
  std::vector<float> matrix;
  std::vector<float> bias;
};

class OutputProjections {
 public:
  // From f32 matrices, one per layer ([rows][cols] row-major each), stored as `type` (kF16 or
  // kF32), with the substitutes (ascending layers). InvalidArgument for another type, layers
  // or substitute layers not strictly ascending or < 1, nothing at all, a matrix of the wrong
  // size, or a non-finite value.
  static absl::StatusOr<std::shared_ptr<const OutputProjections>> FromF32(
      DType type, int rows, int cols, std::vector<int> layers,
      const std::vector<std::vector<float>>& matrices,
      const std::vector<LinearSubstituteF32>& substitutes = {});
  // From a stored blob with its header fields; `expected_sha256` (when non-empty) must match.
  // DataLoss for a blob of the wrong size or hash (a damaged or substituted file).
  static absl::StatusOr<std::shared_ptr<const OutputProjections>> FromBlob(
      DType type, int rows, int cols, std::vector<int> layers, std::vector<int> substitutes,
      std::string blob, const std::string& expected_sha256);

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
  // The dropped layers with a linear substitute, ascending.
  const std::vector<int>& substitutes() const { return substitutes_; }
  // Index of `layer` in substitutes(), or -1.
  int SubstituteIndexOf(int layer) const;
  // Substitute i's matrix as a weight view ([rows][rows]) and in f32; its bias in f32.
  Tensor SubstituteTensor(int i) const;
  std::vector<float> SubstituteMatrixF32(int i) const;
  std::vector<float> SubstituteBiasF32(int i) const;
  const std::string& blob() const { return blob_; }
  size_t bytes_per_layer() const;
  size_t bytes_per_substitute() const;
  const std::string& sha256() const { return sha256_; }
  // The blob's file name beside a strategy file: "projections-<sha256>.bin".
  std::string BlobFileName() const;

 private:
  OutputProjections() = default;
  void ComputeHash();
  size_t element_bytes() const { return type_ == DType::kF32 ? 4 : 2; }
  const char* SubstituteData(int i) const {
    return blob_.data() + layers_.size() * bytes_per_layer() + size_t(i) * bytes_per_substitute();
  }
  DType type_ = DType::kF16;
  int rows_ = 0, cols_ = 0;
  std::vector<int> layers_;
  std::vector<int> substitutes_;
  std::string blob_;
  std::string sha256_;
};

// "f16" / "f32" <-> DType (only those two).
const char* ProjectionTypeName(DType type);
absl::StatusOr<DType> ParseProjectionType(const std::string& name);

}  // namespace kvshare
