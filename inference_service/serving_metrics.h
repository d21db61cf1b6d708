// The worker's Prometheus metrics (prometheus-cpp), served over HTTP by an Exposer that
// main() owns. The scheduler and the server update them; every metric is thread-safe.
//
//   kvshare_requests_total{result}          finished or refused requests: length, stop, eos,
//                                           cancelled, deadline_exceeded, unavailable, error,
//                                           invalid_argument, resource_exhausted
//   kvshare_prompt_tokens_total, kvshare_generated_tokens_total
//   kvshare_queue_depth, kvshare_running_sequences
//   kvshare_time_to_first_token_seconds     accepted -> first token (histogram)
//   kvshare_inter_token_latency_seconds     between a sequence's consecutive tokens (histogram)
//   kvshare_step_seconds, kvshare_step_rows, kvshare_step_sequences
//                                           per forward pass (histograms)
//   kvshare_kv_blocks{state}                used, free, reserved, total
//   kvshare_strategy_version                the version new requests take
#pragma once

#include <memory>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace kvshare {

class ServingMetrics {
 public:
  ServingMetrics();

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

 private:
  // First: the metrics below are registered in it.
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_family_;
  prometheus::Family<prometheus::Gauge>& kv_blocks_family_;

 public:
  // The request counter for `result` (one of the names above; created on first use).
  prometheus::Counter& requests(const std::string& result);
  // The current value of a request counter (tests, logs).
  double requests_value(const std::string& result);

  prometheus::Counter& prompt_tokens;
  prometheus::Counter& generated_tokens;
  prometheus::Gauge& queue_depth;
  prometheus::Gauge& running_sequences;
  prometheus::Histogram& time_to_first_token;
  prometheus::Histogram& inter_token_latency;
  prometheus::Histogram& step_seconds;
  prometheus::Histogram& step_rows;
  prometheus::Histogram& step_sequences;
  prometheus::Gauge& kv_blocks_used;
  prometheus::Gauge& kv_blocks_free;
  prometheus::Gauge& kv_blocks_reserved;
  prometheus::Gauge& kv_blocks_total;
  prometheus::Gauge& strategy_version;
};

}  // namespace kvshare
