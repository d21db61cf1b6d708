// A closed-loop load generator for a worker's Generate: `concurrency` client threads, each
// sending its next request as soon as the previous stream ends, until `requests` are done.
// Measures what a client sees — time to first token, the gaps between tokens, end-to-end
// latency — and the worker's own queue times. Used by `kvshare load` and bench/serving_bench.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "kvshare/v1/inference.grpc.pb.h"

namespace kvshare {

struct LoadOptions {
  int concurrency = 1;
  int requests = 1;
  double timeout_seconds = 600;  // per request
  // Request i (0-based); called from the client threads.
  std::function<v1::GenerateRequest(int)> make_request;
};

struct LatencySummary {
  int64_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;  // seconds
};
LatencySummary Summarize(std::vector<double> samples);

struct LoadReport {
  int concurrency = 0;
  int requests = 0;
  int ok = 0;
  std::map<std::string, int> errors;  // gRPC status code name -> count
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  double wall_seconds = 0;
  double tokens_per_second() const {
    return wall_seconds > 0 ? completion_tokens / wall_seconds : 0;
  }
  double requests_per_second() const { return wall_seconds > 0 ? ok / wall_seconds : 0; }
  LatencySummary ttft;         // request sent -> first token received
  LatencySummary inter_token;  // between consecutive tokens of a stream (client side)
  LatencySummary e2e;          // request sent -> stream closed
  LatencySummary queue;        // the worker's queue_seconds
};

// Runs the load against `channel` (blocking).
LoadReport RunLoad(const std::shared_ptr<grpc::Channel>& channel, const LoadOptions& options);

}  // namespace kvshare
