// absl::Status <-> grpc::Status. The codes share their numbering (both follow
// google.rpc.Code), so the mapping is one-to-one and the message is kept as it is.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace kvshare::runtime {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace kvshare::runtime
