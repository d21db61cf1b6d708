#include "proto/wire/projections_transfer.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "absl/strings/str_format.h"
#include "proto/wire/strategy_wire.h"

namespace kvshare {
namespace {

absl::Status FromGrpc(const grpc::Status& s, const char* call) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrFormat("%s: %s", call, s.error_message()));
}

void SetDeadline(grpc::ClientContext* context, absl::Duration timeout) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
}

}  // namespace

absl::Status UploadProjections(v1::StrategyRegistry::StubInterface* stub,
                               const OutputProjections& projections, absl::Duration call_timeout) {
  const std::string& blob = projections.blob();
  v1::UploadProjectionsRequest request;
  ToProto(HeaderOf(projections), request.mutable_ref());
  uint64_t offset = 0;
  while (true) {
    const uint64_t n = std::min<uint64_t>(kProjectionChunkBytes, blob.size() - offset);
    request.set_offset(offset);
    request.set_data(blob.substr(offset, n));
    v1::UploadProjectionsResponse response;
    grpc::ClientContext context;
    SetDeadline(&context, call_timeout);
    absl::Status s = FromGrpc(stub->UploadProjections(&context, request, &response),
                              "StrategyRegistry.UploadProjections");
    if (!s.ok()) return s;
    if (response.complete()) return absl::OkStatus();
    if (response.received() != offset + n || offset + n >= blob.size()) {
      return absl::InternalError(absl::StrFormat(
          "StrategyRegistry.UploadProjections: the registry has %d of %d bytes after sending "
          "%d, and is not complete",
          response.received(), blob.size(), offset + n));
    }
    offset += n;
  }
}

absl::StatusOr<std::shared_ptr<const OutputProjections>> FetchProjections(
    v1::StrategyRegistry::StubInterface* stub, const ProjectionsHeader& header,
    absl::Duration call_timeout) {
  const uint64_t total = header.blob_bytes();
  std::string blob;
  v1::GetProjectionsRequest request;
  ToProto(header, request.mutable_ref());
  request.set_max_bytes(static_cast<uint32_t>(kProjectionChunkBytes));
  while (blob.size() < total) {
    request.set_offset(blob.size());
    v1::GetProjectionsResponse response;
    grpc::ClientContext context;
    SetDeadline(&context, call_timeout);
    absl::Status s = FromGrpc(stub->GetProjections(&context, request, &response),
                              "StrategyRegistry.GetProjections");
    if (!s.ok()) return s;
    if (response.blob_bytes() != total || response.data().empty() ||
        blob.size() + response.data().size() > total) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "StrategyRegistry.GetProjections %s: blob_bytes %d and a piece of %d bytes at offset "
          "%d; the header says %d bytes",
          header.sha256.substr(0, 16), response.blob_bytes(), response.data().size(), blob.size(),
          total));
    }
    if (blob.empty()) blob.reserve(total);
    blob += response.data();
  }
  return ProjectionsFromBlob(header, std::move(blob));
}

}  // namespace kvshare
