// The drain sequence every service runs on SIGTERM: report NOT_SERVING (so load balancers and
// clients move away), stop admitting new work, give the accepted work `grace` to finish, cancel
// what is left, then stop the gRPC server.
//
// The service supplies the steps; each is optional. Runs on the caller's thread.
#pragma once

#include <functional>

#include "absl/time/time.h"
#include "service_runtime/grpc_server.h"

namespace kvshare::runtime {

struct DrainSteps {
  // New work is refused from here on (e.g. UNAVAILABLE "draining").
  std::function<void()> stop_admitting;
  // True once no accepted work is left; false when `timeout` passes first.
  std::function<bool(absl::Duration timeout)> wait_until_idle;
  // Ends the work still running (it reports why to its callers).
  std::function<void()> cancel_remaining;
};

struct DrainOptions {
  absl::Duration grace = absl::Seconds(30);
  // After cancel_remaining, how long the work gets to wind down before the server stops.
  absl::Duration cancel_wait = absl::Seconds(10);
  // In-flight RPCs get this long after that before gRPC cancels them.
  absl::Duration shutdown_deadline = absl::Seconds(5);
};

// Returns true when all accepted work finished within the grace (a clean drain).
bool DrainAndShutdown(GrpcServer& server, const DrainSteps& steps, const DrainOptions& options);

}  // namespace kvshare::runtime
