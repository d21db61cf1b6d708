// ProjectionsHeader: what describes an output projections blob without its bytes (issue 18) —
// what the registry's records, the wire (kvshare.v1.OutputProjectionsRef) and the stores carry
// so that the blob itself can travel and be kept apart, content-addressed by its sha256.
//
// OutputProjections::FromBlob(header fields, bytes, header.sha256) rebuilds the object and
// checks the bytes against the hash, which covers the header's fields too: bytes fetched under
// a header that does not describe them never load.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/strategy/output_projections.h"

namespace kvshare {

// The largest blob accepted from outside (wire, store): every layer of a 7B Llama shape
// (32 x 4096 x 4096) in f32, 2 GiB; in f16 that model needs 1 GiB.
inline constexpr uint64_t kMaxProjectionBlobBytes = uint64_t{2} << 30;
// The largest piece of a blob in one message or one stored value (registry.proto).
inline constexpr uint64_t kProjectionChunkBytes = uint64_t{1} << 20;

struct ProjectionsHeader {
  DType type = DType::kF16;
  int rows = 0, cols = 0;
  std::vector<int> layers;
  std::vector<int> substitutes;  // dropped layers with a linear substitute (output_projections.h)
  std::string sha256;
  // (rows * cols * layers.size() + (rows * rows + rows) * substitutes.size()) * (2 for f16, 4
  // for f32).
  uint64_t blob_bytes() const;
  // "projections-<sha256>.bin" (OutputProjections::BlobFileName).
  std::string FileName() const;
};

ProjectionsHeader HeaderOf(const OutputProjections& projections);

// A header from outside: sha256 64 lower-case hex digits, rows and cols in [1, 32768], 0 to
// 1024 layers and 0 to 1024 substitutes (not both none), each list >= 1 and ascending, blob_bytes()
// <= kMaxProjectionBlobBytes. InvalidArgument naming `where`, the field, the value and the limit.
absl::Status CheckProjectionsHeader(const ProjectionsHeader& header, const std::string& where);

// OutputProjections::FromBlob with the header's fields and hash (DataLoss on a mismatch).
absl::StatusOr<std::shared_ptr<const OutputProjections>> ProjectionsFromBlob(
    const ProjectionsHeader& header, std::string blob);

}  // namespace kvshare
