#include "common/strategy/projections_header.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/limits.h"
#include "common/util/excerpt.h"

namespace kvshare {
namespace {

constexpr int kMaxSide = 1 << 15;

}  // namespace

uint64_t ProjectionsHeader::blob_bytes() const {
  const uint64_t values = uint64_t(rows) * uint64_t(cols) * layers.size() +
                          (uint64_t(rows) * uint64_t(rows) + rows) * substitutes.size();
  return values * (type == DType::kF32 ? 4 : 2);
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
  h.substitutes = projections.substitutes();
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
  if (h.layers.empty() && h.substitutes.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s has no layers and no substitutes; at least one expected", where));
  }
  for (auto [list, name] : {std::pair{&h.layers, "layers"}, {&h.substitutes, "substitutes"}}) {
    if (list->size() > size_t(kMaxLayers)) {
      return absl::InvalidArgumentError(absl::StrFormat("%s.%s has %d entries; at most %d", where,
                                                        name, list->size(), kMaxLayers));
    }
    for (size_t i = 0; i < list->size(); ++i) {
      const int l = (*list)[i];
      if (l < 1 || l >= kMaxLayers || (i > 0 && l <= (*list)[i - 1])) {
        return absl::InvalidArgumentError(
            absl::StrFormat("%s.%s[%d] is %d; entries must be in [1, %d) and strictly ascending",
                            where, name, i, l, kMaxLayers));
      }
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
                                     header.substitutes, std::move(blob), header.sha256);
}

}  // namespace kvshare
