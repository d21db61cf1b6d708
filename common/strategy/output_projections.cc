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

absl::Status CheckShape(DType type, int rows, int cols, const std::vector<int>& layers) {
  if (type != DType::kF16 && type != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "output projections: type %d is not supported (f16 or f32)", static_cast<int>(type)));
  }
  if (rows < 1 || cols < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("output projections: shape %d x %d must be >= 1 x 1", rows, cols));
  }
  if (layers.empty()) return absl::InvalidArgumentError("output projections: no layers");
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] < 1 || (i > 0 && layers[i] <= layers[i - 1])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "output projections: layers [%s] must be >= 1 and strictly ascending (entry %d is %d)",
          absl::StrJoin(layers, ","), i, layers[i]));
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
  return size_t(rows_) * cols_ * (type_ == DType::kF32 ? 4 : 2);
}

void OutputProjections::ComputeHash() {
  Sha256 h;
  h.Update(absl::StrCat("kvshare-projections-v1 ", ProjectionTypeName(type_), " ", rows_, " ",
                        cols_, " ", absl::StrJoin(layers_, ","), "\n"));
  h.Update(blob_);
  sha256_ = h.HexDigest();
}

absl::StatusOr<std::shared_ptr<const OutputProjections>> OutputProjections::FromF32(
    DType type, int rows, int cols, std::vector<int> layers,
    const std::vector<std::vector<float>>& matrices) {
  absl::Status s = CheckShape(type, rows, cols, layers);
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
  const size_t n = size_t(rows) * cols;
  p->blob_.resize(n * matrices.size() * (type == DType::kF32 ? 4 : 2));
  for (size_t i = 0; i < matrices.size(); ++i) {
    if (matrices[i].size() != n) {
      return absl::InvalidArgumentError(
          absl::StrFormat("output projections: layer %d's matrix has %d values, want %d x %d",
                          p->layers_[i], matrices[i].size(), rows, cols));
    }
    for (size_t k = 0; k < n; ++k) {
      if (!std::isfinite(matrices[i][k])) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "output projections: layer %d value %d is not finite", p->layers_[i], k));
      }
    }
    char* dst = p->blob_.data() + i * p->bytes_per_layer();
    if (type == DType::kF32) {
      std::memcpy(dst, matrices[i].data(), n * 4);
    } else {
      for (size_t k = 0; k < n; ++k) {
        const uint16_t h = cpu::Fp32ToFp16(matrices[i][k]);
        std::memcpy(dst + 2 * k, &h, 2);
      }
    }
  }
  p->ComputeHash();
  return std::shared_ptr<const OutputProjections>(std::move(p));
}

absl::StatusOr<std::shared_ptr<const OutputProjections>> OutputProjections::FromBlob(
    DType type, int rows, int cols, std::vector<int> layers, std::string blob,
    const std::string& expected_sha256) {
  absl::Status s = CheckShape(type, rows, cols, layers);
  if (!s.ok()) return s;
  std::shared_ptr<OutputProjections> p(new OutputProjections());
  p->type_ = type;
  p->rows_ = rows;
  p->cols_ = cols;
  p->layers_ = std::move(layers);
  if (blob.size() != p->bytes_per_layer() * p->layers_.size()) {
    return absl::DataLossError(
        absl::StrFormat("output projections: blob of %d bytes, want %d (%d layers of %d x %d %s)",
                        blob.size(), p->bytes_per_layer() * p->layers_.size(), p->layers_.size(),
                        rows, cols, ProjectionTypeName(type)));
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
  const size_t n = size_t(rows_) * cols_;
  std::vector<float> out(n);
  const char* src = blob_.data() + size_t(i) * bytes_per_layer();
  if (type_ == DType::kF32) {
    std::memcpy(out.data(), src, n * 4);
  } else {
    for (size_t k = 0; k < n; ++k) {
      uint16_t h;
      std::memcpy(&h, src + 2 * k, 2);
      out[k] = cpu::Fp16ToFp32(h);
    }
  }
  return out;
}

std::string OutputProjections::BlobFileName() const {
  return absl::StrCat("projections-", sha256_, ".bin");
}

}  // namespace kvshare
