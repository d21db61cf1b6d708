// How a `kvshare` command reports a failed call: one line on stderr naming the server, then
// what went wrong in words a user can act on —
//
//   DEADLINE_EXCEEDED  "no answer within 30 s (DEADLINE_EXCEEDED); ... --timeout"
//   UNAVAILABLE        "cannot reach it (UNAVAILABLE: <gRPC's message>)"
//   UNIMPLEMENTED      which kvshare services the server does serve, asked through
//                      grpc.health.v1 (every kvshare server registers one status per service):
//                      "127.0.0.1:50051 serves kvshare.v1.InferenceService, not
//                      kvshare.v1.StrategyRegistry (a kvshare-worker; ...)"
//   anything else      "<CODE>: <message>"
#pragma once

#include <string>
#include <vector>

#include "grpcpp/support/status.h"

namespace kvshare::cli {

// The kvshare services a server may register with grpc.health.v1, in the order asked.
const std::vector<std::string>& KnownKvshareServices();

// The message (without "error: ") for `status`, the failure of a call to `service` (a full
// name, e.g. "kvshare.v1.StrategyRegistry") at `server` under a `timeout_s` deadline. For
// UNIMPLEMENTED it asks the server's health service (1 s per name).
std::string DescribeRpcFailure(const std::string& server, const std::string& service,
                               const grpc::Status& status, double timeout_s);

// Prints "error: " + DescribeRpcFailure(...) to stderr; returns the exit code, 1.
int ReportRpcFailure(const std::string& server, const std::string& service,
                     const grpc::Status& status, double timeout_s);

}  // namespace kvshare::cli
