#include "service_runtime/metrics_exposer.h"

#include <iterator>
#include <utility>

#include "prometheus/metric_family.h"
#include "prometheus/text_serializer.h"

namespace kvshare::runtime {

absl::StatusOr<std::unique_ptr<HttpServer>> StartMetricsServer(
    const std::string& host, int port,
    std::vector<std::shared_ptr<prometheus::Registry>> registries) {
  HttpServerOptions options;
  options.host = host;
  options.port = port;
  // A scrape is one small GET: nothing legitimate sends a body or takes long to send.
  options.max_body_bytes = 64 << 10;
  options.request_timeout = absl::Seconds(5);
  HttpRoute metrics;
  metrics.method = "GET";
  metrics.path = "/metrics";
  metrics.handler = [registries = std::move(registries)](const httplib::Request&,
                                                         httplib::Response& res) {
    std::vector<prometheus::MetricFamily> families;
    for (const auto& registry : registries) {
      std::vector<prometheus::MetricFamily> collected = registry->Collect();
      families.insert(families.end(), std::make_move_iterator(collected.begin()),
                      std::make_move_iterator(collected.end()));
    }
    res.set_content(prometheus::TextSerializer().Serialize(families), kMetricsContentType);
  };
  return HttpServer::Start(options, {std::move(metrics)});
}

}  // namespace kvshare::runtime
