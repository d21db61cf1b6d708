// Moving an output projections blob (issue 18) to and from the registry over gRPC, in pieces
// of at most kProjectionChunkBytes (StrategyRegistry.UploadProjections / GetProjections in
// registry.proto): the publisher uploads before PublishStrategy, a worker fetches what an
// assignment names before applying it.
//
// Stateless functions; thread-safe as the stub is. Each call gets `call_timeout`.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/strategy/projections_header.h"
#include "kvshare/v1/registry.grpc.pb.h"

namespace kvshare {

// Sends the whole blob (a registry that holds it already answers complete at the first
// piece). The registry's error, as an absl::Status with its code, otherwise.
absl::Status UploadProjections(v1::StrategyRegistry::StubInterface* stub,
                               const OutputProjections& projections,
                               absl::Duration call_timeout = absl::Seconds(30));

// Fetches the blob `header` names and checks it against the hash (DataLoss on a mismatch,
// InvalidArgument for a registry that reports another size than the header's).
absl::StatusOr<std::shared_ptr<const OutputProjections>> FetchProjections(
    v1::StrategyRegistry::StubInterface* stub, const ProjectionsHeader& header,
    absl::Duration call_timeout = absl::Seconds(30));

}  // namespace kvshare
