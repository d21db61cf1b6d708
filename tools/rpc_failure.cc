#include "tools/rpc_failure.h"

#include <algorithm>
#include <iostream>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "service_runtime/health_check.h"
#include "tools/client_flags.h"

namespace kvshare::cli {
namespace {

std::string CodeName(const grpc::Status& status) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
}

bool IsWorkerService(const std::string& service) {
  return service == "kvshare.v1.InferenceService";
}

// What runs the services, for the hint: the worker serves InferenceService alone.
std::string Hint(const std::string& wanted) {
  const ServerKind kind = IsWorkerService(wanted) ? ServerKind::kWorker : ServerKind::kSearch;
  return absl::StrFormat("this command talks to a %s: --server, $%s, default %s",
                         kind == ServerKind::kWorker ? "kvshare-worker" : "kvshare-search",
                         ServerEnvVar(kind), BuiltInServer(kind));
}

std::string DescribeUnimplemented(const std::string& server, const std::string& service,
                                  const grpc::Status& status) {
  std::vector<std::string> served;
  bool health_answered = false;
  for (const std::string& name : KnownKvshareServices()) {
    auto answer = runtime::CheckGrpcHealth(server, name, absl::Seconds(1));
    if (!answer.ok()) break;  // no health service (or gone): nothing more to learn
    health_answered = true;
    if (*answer != runtime::ServingStatus::kServiceUnknown) served.push_back(name);
  }
  const bool serves_wanted = std::find(served.begin(), served.end(), service) != served.end();
  if (serves_wanted) {
    return absl::StrFormat(
        "%s: UNIMPLEMENTED: %s (it serves %s but not this method: an older kvshare?)", server,
        status.error_message(), service);
  }
  if (!served.empty()) {
    const bool worker = served.size() == 1 && IsWorkerService(served[0]);
    return absl::StrFormat("%s serves %s, not %s (it is a %s; %s)", server,
                           absl::StrJoin(served, ", "), service,
                           worker ? "kvshare-worker" : "kvshare-search", Hint(service));
  }
  const std::string said =
      status.error_message().empty() ? "" : absl::StrCat(": ", status.error_message());
  return absl::StrFormat("%s does not serve %s (UNIMPLEMENTED%s; %s; %s)", server, service, said,
                         health_answered ? "it serves none of the kvshare services"
                                         : "it has no grpc.health.v1 to say what it serves",
                         Hint(service));
}

}  // namespace

const std::vector<std::string>& KnownKvshareServices() {
  static const auto* names = new std::vector<std::string>{
      "kvshare.v1.InferenceService", "kvshare.v1.SearchService", "kvshare.v1.StrategyRegistry",
      "kvshare.v1.Rollouts", "kvshare.v1.StrategyDistribution"};
  return *names;
}

std::string DescribeRpcFailure(const std::string& server, const std::string& service,
                               const grpc::Status& status, double timeout_s) {
  switch (status.error_code()) {
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::StrFormat(
          "%s: no answer within %g s (DEADLINE_EXCEEDED); the server is busy or stuck, or "
          "the address is not a kvshare server; --timeout SECONDS waits longer",
          server, timeout_s);
    case grpc::StatusCode::UNAVAILABLE:
      return absl::StrFormat("%s: cannot reach it (UNAVAILABLE: %s)", server,
                             status.error_message());
    case grpc::StatusCode::UNIMPLEMENTED:
      return DescribeUnimplemented(server, service, status);
    default:
      return absl::StrFormat("%s: %s: %s", server, CodeName(status), status.error_message());
  }
}

int ReportRpcFailure(const std::string& server, const std::string& service,
                     const grpc::Status& status, double timeout_s) {
  std::cerr << "error: " << DescribeRpcFailure(server, service, status, timeout_s) << "\n";
  return 1;
}

}  // namespace kvshare::cli
