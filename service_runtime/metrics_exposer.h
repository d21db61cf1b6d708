// The Prometheus /metrics endpoint (prometheus-cpp's civetweb Exposer) for a service's
// registries.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"

namespace kvshare::runtime {

// Serves `registries` at http://host:port/metrics. Unavailable naming the address when it
// cannot listen (the Exposer throws; the exception stops here).
absl::StatusOr<std::unique_ptr<prometheus::Exposer>> StartMetricsExposer(
    const std::string& host, int port,
    const std::vector<std::shared_ptr<prometheus::Registry>>& registries);

}  // namespace kvshare::runtime
