// kvshare health: asks a kvshare-worker or kvshare-search whether it is serving
// (grpc.health.v1), for container HEALTHCHECKs and scripts. Exit 0 SERVING, 1 NOT_SERVING or
// UNKNOWN, 2 when the server cannot be asked.
#include <cstdio>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "service_runtime/health_check.h"
#include "tools/client_flags.h"
#include "tools/commands.h"

namespace kvshare::cli {

Runner RegisterHealth(CLI::App& app) {
  struct Flags {
    std::string server;
    std::string service;
    double timeout_s = 3;
    bool json = false;
  };
  auto flags = std::make_shared<Flags>();
  CLI::App* sub = app.add_subcommand(
      "health", "Is a worker or search service serving? (grpc.health.v1; exit 0 if SERVING)");
  AddServerFlag(sub, &flags->server, ServerKind::kWorker)
      ->description(
          "Address HOST:PORT of a kvshare-worker or kvshare-search (default: $KVSHARE_WORKER, "
          "else 127.0.0.1:50051)");
  sub->add_option("--service", flags->service,
                  "A service name, e.g. kvshare.v1.InferenceService (default: the whole server)");
  AddTimeoutFlag(sub, &flags->timeout_s, "Seconds to wait for the answer");
  AddJsonFlag(sub, &flags->json, R"(Print {"server", "service", "status"} as one line of JSON)");
  return [flags]() {
    auto status =
        runtime::CheckGrpcHealth(flags->server, flags->service, absl::Seconds(flags->timeout_s));
    if (!status.ok()) {
      std::fprintf(stderr, "health %s: %s\n", flags->server.c_str(),
                   std::string(status.status().message()).c_str());
      return 2;
    }
    if (flags->json) {
      // The names of grpc.health.v1's HealthCheckResponse.
      std::printf("%s\n", nlohmann::json{{"server", flags->server},
                                         {"service", flags->service},
                                         {"status", runtime::ServingStatusName(*status)}}
                              .dump()
                              .c_str());
    } else {
      std::printf("%s\n", runtime::ServingStatusName(*status));
    }
    return *status == runtime::ServingStatus::kServing ? 0 : 1;
  };
}

}  // namespace kvshare::cli
