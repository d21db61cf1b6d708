#include "inference_service/serving_metrics.h"

namespace kvshare {
namespace {

using prometheus::Histogram;

// Latencies from 1 ms to 30 s, roughly x2 per bucket.
Histogram::BucketBoundaries LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
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
      prompt_tokens(NewCounter(*registry_, "kvshare_prompt_tokens_total",
                               "Prompt tokens of admitted requests")),
      generated_tokens(NewCounter(*registry_, "kvshare_generated_tokens_total",
                                  "Tokens generated and streamed")),
      queue_depth(NewGauge(*registry_, "kvshare_queue_depth", "Requests waiting for admission")),
      running_sequences(
          NewGauge(*registry_, "kvshare_running_sequences", "Sequences in the running batch")),
      time_to_first_token(NewHistogram(*registry_, "kvshare_time_to_first_token_seconds",
                                       "Request accepted to its first token", LatencyBuckets())),
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
      strategy_version(
          NewGauge(*registry_, "kvshare_strategy_version", "Strategy version new requests run")) {
  for (const char* result : {"length", "stop", "eos", "cancelled", "deadline_exceeded",
                             "unavailable", "error", "invalid_argument", "resource_exhausted"}) {
    requests(result);
  }
}

prometheus::Counter& ServingMetrics::requests(const std::string& result) {
  return requests_family_.Add({{"result", result}});
}

double ServingMetrics::requests_value(const std::string& result) {
  return requests(result).Value();
}

}  // namespace kvshare
