#include "common/strategy/projections_header.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/limits.h"
#include "common/util/excerpt.h"

namespace kvshare {
namespace {

constexpr int kMaxSide = 1 << 15;

}  // namespace

uint64_t ProjectionsHeader::blob_bytes() const {
  return uint64_t(rows) * uint64_t(cols) * (type == DType::kF32 ? 4 : 2) * layers.size();
}

std::string ProjectionsHeader::FileName() const {
  return absl::StrCat("projections-", sha256, ".bin");
}

ProjectionsHeader HeaderOf(const OutputProjections& projections) {
  ProjectionsHeader h;
  h.type = projections.type();
  h.rows = projections.rows();
  h.cols = projections.cols();
  h.layers = projections.layers();
  h.sha256 = projections.sha256();
  return h;
}

absl::Status CheckProjectionsHeader(const ProjectionsHeader& h, const std::string& where) {
  if (h.sha256.size() != 64 ||
      h.sha256.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s.sha256 '%s' is not 64 lower-case hex digits", where, Excerpt(h.sha256)));
  }
  if (h.type != DType::kF16 && h.type != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrFormat("%s.type is not f16 or f32", where));
  }
  if (h.rows < 1 || h.rows > kMaxSide || h.cols < 1 || h.cols > kMaxSide) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: rows %d x cols %d; each must be in [1, %d]", where, h.rows, h.cols, kMaxSide));
  }
  if (h.layers.empty() || h.layers.size() > size_t(kMaxLayers)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s.layers has %d entries; 1 to %d expected",
                                                      where, h.layers.size(), kMaxLayers));
  }
  for (size_t i = 0; i < h.layers.size(); ++i) {
    if (h.layers[i] < 1 || h.layers[i] >= kMaxLayers || (i > 0 && h.layers[i] <= h.layers[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s.layers[%d] is %d; layers must be in [1, %d) and strictly ascending",
                          where, i, h.layers[i], kMaxLayers));
    }
  }
  if (h.blob_bytes() > kMaxProjectionBlobBytes) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: a blob of %d bytes; at most %d", where,
                                                      h.blob_bytes(), kMaxProjectionBlobBytes));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const OutputProjections>> ProjectionsFromBlob(
    const ProjectionsHeader& header, std::string blob) {
  return OutputProjections::FromBlob(header.type, header.rows, header.cols, header.layers,
                                     std::move(blob), header.sha256);
}

}  // namespace kvshare
