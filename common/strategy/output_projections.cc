#include "common/strategy/output_projections.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/util/sha256.h"
#include "kernels/cpu/half.h"

namespace kvshare {
namespace {

absl::Status CheckAscending(const char* what, const std::vector<int>& layers) {
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] < 1 || (i > 0 && layers[i] <= layers[i - 1])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "output projections: %s [%s] must be >= 1 and strictly ascending (entry %d is %d)", what,
          absl::StrJoin(layers, ","), i, layers[i]));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckShape(DType type, int rows, int cols, const std::vector<int>& layers,
                        const std::vector<int>& substitutes) {
  if (type != DType::kF16 && type != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "output projections: type %d is not supported (f16 or f32)", static_cast<int>(type)));
  }
  if (rows < 1 || cols < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("output projections: shape %d x %d must be >= 1 x 1", rows, cols));
  }
  if (layers.empty() && substitutes.empty()) {
    return absl::InvalidArgumentError("output projections: no layers and no substitutes");
  }
  absl::Status s = CheckAscending("layers", layers);
  if (s.ok()) s = CheckAscending("substitutes", substitutes);
  return s;
}

// Half or single floats from `src` into `dst` as f32.
void ToF32(DType type, const char* src, size_t n, float* dst) {
  if (type == DType::kF32) {
    std::memcpy(dst, src, n * 4);
    return;
  }
  for (size_t k = 0; k < n; ++k) {
    uint16_t h;
    std::memcpy(&h, src + 2 * k, 2);
    dst[k] = cpu::Fp16ToFp32(h);
  }
}

// `values` stored as `type` at `dst`; InvalidArgument naming `what` for a non-finite value.
absl::Status StoreValues(DType type, const std::vector<float>& values, const std::string& what,
                         char* dst) {
  for (size_t k = 0; k < values.size(); ++k) {
    if (!std::isfinite(values[k])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("output projections: %s value %d is not finite", what, k));
    }
  }
  if (type == DType::kF32) {
    std::memcpy(dst, values.data(), values.size() * 4);
  } else {
    for (size_t k = 0; k < values.size(); ++k) {
      const uint16_t h = cpu::Fp32ToFp16(values[k]);
      std::memcpy(dst + 2 * k, &h, 2);
    }
  }
  return absl::OkStatus();
}

}  // namespace

const char* ProjectionTypeName(DType type) { return type == DType::kF32 ? "f32" : "f16"; }

absl::StatusOr<DType> ParseProjectionType(const std::string& name) {
  if (name == "f16") return DType::kF16;
  if (name == "f32") return DType::kF32;
  return absl::InvalidArgumentError(
      absl::StrFormat("output projection type '%s' is not one of f16, f32", name.substr(0, 32)));
}

size_t OutputProjections::bytes_per_layer() const {
  return size_t(rows_) * cols_ * element_bytes();
}

size_t OutputProjections::bytes_per_substitute() const {
  return (size_t(rows_) * rows_ + rows_) * element_bytes();
}

void OutputProjections::ComputeHash() {
  Sha256 h;
  std::string header = absl::StrCat("kvshare-projections-v1 ", ProjectionTypeName(type_), " ",
                                    rows_, " ", cols_, " ", absl::StrJoin(layers_, ","));
  if (!substitutes_.empty()) {
    absl::StrAppend(&header, " substitutes ", absl::StrJoin(substitutes_, ","));
  }
  h.Update(header + "\n");
  h.Update(blob_);
  sha256_ = h.HexDigest();
}

absl::StatusOr<std::shared_ptr<const OutputProjections>> OutputProjections::FromF32(
    DType type, int rows, int cols, std::vector<int> layers,
    const std::vector<std::vector<float>>& matrices,
    const std::vector<LinearSubstituteF32>& substitutes) {
  std::vector<int> substitute_layers;
  for (const LinearSubstituteF32& sub : substitutes) substitute_layers.push_back(sub.layer);
  absl::Status s = CheckShape(type, rows, cols, layers, substitute_layers);
  if (!s.ok()) return s;
  if (matrices.size() != layers.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "output projections: %d matrices for %d layers", matrices.size(), layers.size()));
  }
  std::shared_ptr<OutputProjections> p(new OutputProjections());
  p->type_ = type;
  p->rows_ = rows;
  p->cols_ = cols;
  p->layers_ = std::move(layers);
  p->substitutes_ = std::move(substitute_layers);
  const size_t n = size_t(rows) * cols;
  p->blob_.resize(matrices.size() * p->bytes_per_layer() +
                  substitutes.size() * p->bytes_per_substitute());
  for (size_t i = 0; i < matrices.size(); ++i) {
    if (matrices[i].size() != n) {
      return absl::InvalidArgumentError(
          absl::StrFormat("output projections: layer %d's matrix has %d values, want %d x %d",
                          p->layers_[i], matrices[i].size(), rows, cols));
    }
    s = StoreValues(type, matrices[i], absl::StrCat("layer ", p->layers_[i]),
                    p->blob_.data() + i * p->bytes_per_layer());
    if (!s.ok()) return s;
  }
  for (size_t i = 0; i < substitutes.size(); ++i) {
    const LinearSubstituteF32& sub = substitutes[i];
    if (sub.matrix.size() != size_t(rows) * rows || sub.bias.size() != size_t(rows)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "output projections: substitute %d has a matrix of %d values and a bias of %d, want "
          "%d x %d and %d",
          sub.layer, sub.matrix.size(), sub.bias.size(), rows, rows, rows));
    }
    char* dst =
        p->blob_.data() + p->layers_.size() * p->bytes_per_layer() + i * p->bytes_per_substitute();
    s = StoreValues(type, sub.matrix, absl::StrCat("substitute ", sub.layer), dst);
    if (s.ok()) {
      s = StoreValues(type, sub.bias, absl::StrCat("substitute ", sub.layer, " bias"),
                      dst + size_t(rows) * rows * p->element_bytes());
    }
    if (!s.ok()) return s;
  }
  p->ComputeHash();
  return std::shared_ptr<const OutputProjections>(std::move(p));
}

absl::StatusOr<std::shared_ptr<const OutputProjections>> OutputProjections::FromBlob(
    DType type, int rows, int cols, std::vector<int> layers, std::vector<int> substitutes,
    std::string blob, const std::string& expected_sha256) {
  absl::Status s = CheckShape(type, rows, cols, layers, substitutes);
  if (!s.ok()) return s;
  std::shared_ptr<OutputProjections> p(new OutputProjections());
  p->type_ = type;
  p->rows_ = rows;
  p->cols_ = cols;
  p->layers_ = std::move(layers);
  p->substitutes_ = std::move(substitutes);
  const size_t want =
      p->bytes_per_layer() * p->layers_.size() + p->bytes_per_substitute() * p->substitutes_.size();
  if (blob.size() != want) {
    return absl::DataLossError(absl::StrFormat(
        "output projections: blob of %d bytes, want %d (%d layers of %d x %d and %d substitutes "
        "of %d x %d + %d, %s)",
        blob.size(), want, p->layers_.size(), rows, cols, p->substitutes_.size(), rows, rows, rows,
        ProjectionTypeName(type)));
  }
  p->blob_ = std::move(blob);
  p->ComputeHash();
  if (!expected_sha256.empty() && p->sha256_ != expected_sha256) {
    return absl::DataLossError(
        absl::StrFormat("output projections: blob hash %s does not match the recorded %s",
                        p->sha256_, expected_sha256.substr(0, 64)));
  }
  return std::shared_ptr<const OutputProjections>(std::move(p));
}

int OutputProjections::IndexOf(int layer) const {
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (layers_[i] == layer) return static_cast<int>(i);
  }
  return -1;
}

Tensor OutputProjections::LayerTensor(int i) const {
  Tensor t;
  t.name = absl::StrCat("blk.", layers_[i], ".attn_output.calibrated");
  t.type = type_;
  t.shape = {cols_, rows_};
  t.data = blob_.data() + size_t(i) * bytes_per_layer();
  t.nbytes = bytes_per_layer();
  return t;
}

std::vector<float> OutputProjections::LayerF32(int i) const {
  std::vector<float> out(size_t(rows_) * cols_);
  ToF32(type_, blob_.data() + size_t(i) * bytes_per_layer(), out.size(), out.data());
  return out;
}

int OutputProjections::SubstituteIndexOf(int layer) const {
  for (size_t i = 0; i < substitutes_.size(); ++i) {
    if (substitutes_[i] == layer) return static_cast<int>(i);
  }
  return -1;
}

Tensor OutputProjections::SubstituteTensor(int i) const {
  Tensor t;
  t.name = absl::StrCat("blk.", substitutes_[i], ".attn_substitute");
  t.type = type_;
  t.shape = {rows_, rows_};
  t.data = SubstituteData(i);
  t.nbytes = size_t(rows_) * rows_ * element_bytes();
  return t;
}

std::vector<float> OutputProjections::SubstituteMatrixF32(int i) const {
  std::vector<float> out(size_t(rows_) * rows_);
  ToF32(type_, SubstituteData(i), out.size(), out.data());
  return out;
}

std::vector<float> OutputProjections::SubstituteBiasF32(int i) const {
  std::vector<float> out(rows_);
  ToF32(type_, SubstituteData(i) + size_t(rows_) * rows_ * element_bytes(), out.size(), out.data());
  return out;
}

std::string OutputProjections::BlobFileName() const {
  return absl::StrCat("projections-", sha256_, ".bin");
}

}  // namespace kvshare
