// The command line of a kvshare-worker in the fleet tests: `model` on one thread, loopback on a
// port the kernel picks (written to `port_file`), metrics on another, a 4 MiB KV budget, a
// strategy stream to `control_plane` as `worker_id`, and a load report every 0.2 s. Callers
// append their own flags.
#pragma once

#include <string>
#include <vector>

namespace kvshare::testing {

inline std::vector<std::string> FleetWorkerArgs(const std::string& binary, const std::string& model,
                                                const std::string& port_file,
                                                const std::string& control_plane,
                                                const std::string& worker_id) {
  // clang-format off
  return {binary,
          "--model", model,
          "--threads", "1",
          "--host", "127.0.0.1",
          "--port", "0",
          "--port-file", port_file,
          "--metrics-port", "0",
          "--kv-budget-mib", "4",
          "--control-plane", control_plane,
          "--worker-id", worker_id,
          "--load-interval", "0.2"};
  // clang-format on
}

}  // namespace kvshare::testing
