// kvshare health: asks a kvshare-worker or kvshare-search whether it is serving
// (grpc.health.v1), for container HEALTHCHECKs and scripts. Exit 0 SERVING, 1 NOT_SERVING or
// UNKNOWN, 2 when the server cannot be asked.
#include <cstdio>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "service_runtime/health_check.h"
#include "tools/commands.h"

namespace kvshare::cli {

Runner RegisterHealth(CLI::App& app) {
  struct Flags {
    std::string server = "127.0.0.1:50051";
    std::string service;
    double timeout_s = 3;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand(
      "health", "Is a worker or search service serving? (grpc.health.v1; exit 0 if SERVING)");
  sub->add_option("--server", flags->server, "host:port of the gRPC server")->capture_default_str();
  sub->add_option("--service", flags->service,
                  "A service name, e.g. kvshare.v1.InferenceService (default: the whole server)");
  sub->add_option("--timeout", flags->timeout_s, "Seconds to wait for the answer")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  return [flags]() {
    auto status =
        runtime::CheckGrpcHealth(flags->server, flags->service, absl::Seconds(flags->timeout_s));
    if (!status.ok()) {
      std::fprintf(stderr, "health %s: %s\n", flags->server.c_str(),
                   std::string(status.status().message()).c_str());
      return 2;
    }
    std::printf("%s\n", runtime::ServingStatusName(*status));
    return *status == runtime::ServingStatus::kServing ? 0 : 1;
  };
}

}  // namespace kvshare::cli
