// The Prometheus /metrics endpoint for a service's registries: prometheus-cpp's registry and
// text serializer behind an HttpServer (no civetweb exposer).
//
//   GET /metrics   200, text/plain; version=0.0.4 (the text exposition format)
//   HEAD /metrics  200, the same headers, no body
//   other methods  405 with Allow: GET, HEAD; other paths 404
//
// Connections, timeouts and the busy-port rule are HttpServer's (http_server.h).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"
#include "service_runtime/http_server.h"

namespace kvshare::runtime {

inline constexpr char kMetricsContentType[] = "text/plain; version=0.0.4; charset=utf-8";

// Serves `registries` at http://host:port/metrics until the returned server is destroyed.
// Unavailable naming host:port when it cannot listen (e.g. the port is taken).
absl::StatusOr<std::unique_ptr<HttpServer>> StartMetricsServer(
    const std::string& host, int port,
    std::vector<std::shared_ptr<prometheus::Registry>> registries);

}  // namespace kvshare::runtime
