// The worker's Prometheus metrics (prometheus-cpp), served over HTTP by an Exposer that
// main() owns. The scheduler and the server update them; every metric is thread-safe.
//
//   kvshare_requests_total{result}          finished or refused requests: length, stop, eos,
//                                           cancelled, deadline_exceeded, unavailable, error,
//                                           invalid_argument, resource_exhausted
//   kvshare_prompt_tokens_total, kvshare_generated_tokens_total
//   kvshare_queue_depth, kvshare_running_sequences
//   kvshare_time_to_first_token_seconds     accepted -> first token (histogram)
//   kvshare_e2e_request_latency_seconds     accepted -> finished, whatever the result
//                                           (histogram)
//   kvshare_request_queue_time_seconds      accepted -> admitted to the running batch (or
//                                           finished, if it never was) (histogram)
//   kvshare_inter_token_latency_seconds     between a sequence's consecutive tokens (histogram)
//   kvshare_step_seconds, kvshare_step_rows, kvshare_step_sequences
//                                           per forward pass (histograms)
//   kvshare_kv_blocks{state}                used, free, reserved, total
//   kvshare_kv_cache_usage_ratio            used / total blocks, 0..1
//   kvshare_strategy_version                the version new requests take
//   kvshare_build_info{version,commit}      1 (build_info.h)
//   kvshare_model_info{model,fingerprint,backend,device,block_tokens,kv_blocks}
//                                           1, once the model is loaded (SetModelInfo)
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
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
  prometheus::Family<prometheus::Gauge>& model_info_family_;
  absl::Mutex model_info_mu_;
  prometheus::Gauge* model_info_ ABSL_GUARDED_BY(model_info_mu_) = nullptr;

 public:
  // The request counter for `result` (one of the names above; created on first use).
  prometheus::Counter& requests(const std::string& result);
  // The current value of a request counter (tests, logs).
  double requests_value(const std::string& result);
  // Publishes kvshare_model_info with these labels (replacing any earlier set).
  void SetModelInfo(const std::map<std::string, std::string>& labels);

  prometheus::Counter& prompt_tokens;
  prometheus::Counter& generated_tokens;
  prometheus::Gauge& queue_depth;
  prometheus::Gauge& running_sequences;
  prometheus::Histogram& time_to_first_token;
  prometheus::Histogram& e2e_request_latency;
  prometheus::Histogram& request_queue_time;
  prometheus::Histogram& inter_token_latency;
  prometheus::Histogram& step_seconds;
  prometheus::Histogram& step_rows;
  prometheus::Histogram& step_sequences;
  prometheus::Gauge& kv_blocks_used;
  prometheus::Gauge& kv_blocks_free;
  prometheus::Gauge& kv_blocks_reserved;
  prometheus::Gauge& kv_blocks_total;
  prometheus::Gauge& kv_cache_usage_ratio;
  prometheus::Gauge& strategy_version;
};

}  // namespace kvshare
