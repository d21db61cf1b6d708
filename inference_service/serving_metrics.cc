#include "inference_service/serving_metrics.h"

#include "service_runtime/build_info.h"

namespace kvshare {
namespace {

using prometheus::Histogram;

// Latencies from 1 ms to 30 s, roughly x2 per bucket.
Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
}

// Whole requests: 10 ms to 10 min.
Histogram::BucketBoundaries RequestBuckets() {
  return {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600};
}

prometheus::Counter& NewCounter(prometheus::Registry& r, const char* name, const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}
prometheus::Gauge& NewGauge(prometheus::Registry& r, const char* name, const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r).Add({});
}
prometheus::Histogram& NewHistogram(prometheus::Registry& r, const char* name, const char* help,
                                    Histogram::BucketBoundaries buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
}

}  // namespace

ServingMetrics::ServingMetrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_family_(prometheus::BuildCounter()
                           .Name("kvshare_requests_total")
                           .Help("Requests by result: finish reason, or why refused or stopped")
                           .Register(*registry_)),
      kv_blocks_family_(prometheus::BuildGauge()
                            .Name("kvshare_kv_blocks")
                            .Help("KV pool blocks by state (used, free, reserved, total)")
                            .Register(*registry_)),
      model_info_family_(prometheus::BuildGauge()
                             .Name("kvshare_model_info")
                             .Help("The model this worker serves, as labels (value 1)")
                             .Register(*registry_)),
      prompt_tokens(NewCounter(*registry_, "kvshare_prompt_tokens_total",
                               "Prompt tokens of admitted requests")),
      generated_tokens(NewCounter(*registry_, "kvshare_generated_tokens_total",
                                  "Tokens generated and streamed")),
      queue_depth(NewGauge(*registry_, "kvshare_queue_depth", "Requests waiting for admission")),
      running_sequences(
          NewGauge(*registry_, "kvshare_running_sequences", "Sequences in the running batch")),
      time_to_first_token(NewHistogram(*registry_, "kvshare_time_to_first_token_seconds",
                                       "Request accepted to its first token", LatencyBuckets())),
      e2e_request_latency(NewHistogram(*registry_, "kvshare_e2e_request_latency_seconds",
                                       "Request accepted to finished (any result)",
                                       RequestBuckets())),
      request_queue_time(NewHistogram(*registry_, "kvshare_request_queue_time_seconds",
                                      "Request accepted to admitted into the running batch",
                                      RequestBuckets())),
      inter_token_latency(NewHistogram(*registry_, "kvshare_inter_token_latency_seconds",
                                       "Time between a sequence's consecutive tokens",
                                       LatencyBuckets())),
      step_seconds(NewHistogram(*registry_, "kvshare_step_seconds",
                                "Duration of one forward pass over the batch", LatencyBuckets())),
      step_rows(NewHistogram(*registry_, "kvshare_step_rows",
                             "Rows (tokens over all sequences) per forward pass",
                             {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024})),
      step_sequences(NewHistogram(*registry_, "kvshare_step_sequences",
                                  "Sequences (decode rows and prefill chunks) per forward pass",
                                  {1, 2, 4, 8, 16, 32, 64, 128, 256})),
      kv_blocks_used(kv_blocks_family_.Add({{"state", "used"}})),
      kv_blocks_free(kv_blocks_family_.Add({{"state", "free"}})),
      kv_blocks_reserved(kv_blocks_family_.Add({{"state", "reserved"}})),
      kv_blocks_total(kv_blocks_family_.Add({{"state", "total"}})),
      kv_cache_usage_ratio(NewGauge(*registry_, "kvshare_kv_cache_usage_ratio",
                                    "KV pool blocks in use / all blocks (0..1)")),
      strategy_version(
          NewGauge(*registry_, "kvshare_strategy_version", "Strategy version new requests run")) {
  for (const char* result : {"length", "stop", "eos", "cancelled", "deadline_exceeded",
                             "unavailable", "error", "invalid_argument", "resource_exhausted"}) {
    requests(result);
  }
  prometheus::BuildGauge()
      .Name("kvshare_build_info")
      .Help("The build of this binary, as labels (value 1)")
      .Register(*registry_)
      .Add({{"version", runtime::ProjectVersion()}, {"commit", runtime::GitCommit()}})
      .Set(1);
}

void ServingMetrics::SetModelInfo(const std::map<std::string, std::string>& labels) {
  absl::MutexLock lock(&model_info_mu_);
  if (model_info_ != nullptr) model_info_family_.Remove(model_info_);
  model_info_ = &model_info_family_.Add(labels);
  model_info_->Set(1);
}

prometheus::Counter& ServingMetrics::requests(const std::string& result) {
  return requests_family_.Add({{"result", result}});
}

double ServingMetrics::requests_value(const std::string& result) {
  return requests(result).Value();
}

}  // namespace kvshare
