// The worker's OpenAI-compatible HTTP front end (kvshare-worker --http-port): an HttpServer
// (service_runtime/http_server.h) with
//
//   GET  /v1/models             the model this worker serves
//   POST /v1/completions        text completion, whole or streamed (server-sent events)
//   POST /v1/chat/completions   chat completion, whole or streamed
//   GET  /health                200 while serving; 503 while loading or draining
//
// Each completion is parsed (openai_api.h), built into a GenerationRequest by the same
// BuildGenerationRequest as gRPC Generate and submitted to the same Scheduler, so admission,
// limits, metrics and outputs are Generate's: a greedy request answers the same text over
// either protocol. Refusals are OpenAI error objects: 400 naming the field, 429 when the
// admission queue is full, 503 while loading or draining. A client that disconnects (mid-
// stream, or while waiting for a whole response) cancels its request: the scheduler stops it
// at the next step and frees its KV blocks.
//
// Life cycle, as InferenceServer's: Start() listens at once (completions answer 503 until
// SetWorker); on shutdown BeginDrain() (health 503), then — once the scheduler is idle —
// WaitForResponses() lets the last events reach their clients, and Shutdown() closes. The
// worker given to SetWorker must outlive Shutdown(). Thread-safe.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "inference_service/generate_stream.h"
#include "inference_service/inference_worker.h"
#include "inference_service/serving_metrics.h"
#include "service_runtime/http_server.h"

namespace kvshare {

class OpenAiHttpServer {
 public:
  // Listens on options.host:options.port (0 picks a free port). Unavailable naming host:port
  // when it cannot listen. `metrics` may be null and must outlive the server.
  static absl::StatusOr<std::unique_ptr<OpenAiHttpServer>> Start(
      const runtime::HttpServerOptions& options, ServingMetrics* metrics);
  ~OpenAiHttpServer();

  int port() const { return http_->port(); }
  void SetWorker(InferenceWorker* worker) { worker_.store(worker); }
  void BeginDrain() { draining_.store(true); }
  // True once every accepted completion has written its last byte (or lost its client);
  // false when `timeout` passes first.
  bool WaitForResponses(absl::Duration timeout) { return responses_.WaitForZero(timeout); }
  void Shutdown();

 private:
  class Routes;  // the handlers (openai_http.cc)

  explicit OpenAiHttpServer(ServingMetrics* metrics);

  ServingMetrics* const metrics_;
  std::atomic<InferenceWorker*> worker_{nullptr};
  std::atomic<bool> draining_{false};
  StreamCounter responses_;
  std::string id_prefix_;
  std::atomic<int64_t> next_id_{1};
  uint64_t seed_base_ = 0;  // request n's default seed is a mix of seed_base_ + n
  int64_t started_unix_ = 0;
  std::unique_ptr<Routes> routes_;
  std::unique_ptr<runtime::HttpServer> http_;  // last: stopped first
};

}  // namespace kvshare
