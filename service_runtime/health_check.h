// A grpc.health.v1 client without the health proto's generated code (Debian ships neither the
// .proto nor its stubs): Health/Check over a generic stub with the two tiny messages encoded by
// hand — HealthCheckRequest{string service = 1} -> HealthCheckResponse{ServingStatus status =
// 1}. What `kvshare health` (the images' HEALTHCHECK) runs.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvshare::runtime {

enum class ServingStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };

const char* ServingStatusName(ServingStatus s);  // "SERVING", ...

// Health/Check of `service` ("" = the whole server) at `address` (host:port). The status the
// server answers (NOT_FOUND from the server is kServiceUnknown); an error when it cannot be
// asked within `timeout` (UNAVAILABLE, DEADLINE_EXCEEDED, ... with gRPC's message).
absl::StatusOr<ServingStatus> CheckGrpcHealth(const std::string& address,
                                              const std::string& service, absl::Duration timeout);

}  // namespace kvshare::runtime
