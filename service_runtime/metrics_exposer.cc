#include "service_runtime/metrics_exposer.h"

#include <exception>

#include "absl/strings/str_format.h"

namespace kvshare::runtime {

absl::StatusOr<std::unique_ptr<prometheus::Exposer>> StartMetricsExposer(
    const std::string& host, int port,
    const std::vector<std::shared_ptr<prometheus::Registry>>& registries) {
  const std::string address = absl::StrFormat("%s:%d", host, port);
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrFormat("cannot serve metrics on %s: %s", address, e.what()));
  }
  for (const auto& registry : registries) exposer->RegisterCollectable(registry);
  return exposer;
}

}  // namespace kvshare::runtime
