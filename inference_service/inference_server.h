// The worker's gRPC server: kvshare.v1.InferenceService on the callback API (one reactor per
// stream, no thread per request), grpc.health.v1 and server reflection.
//
// Life cycle:
//   Start()       listens at once; health is NOT_SERVING and every RPC answers UNAVAILABLE
//                 ("loading") until
//   SetWorker()   the model is loaded and a strategy applied: health SERVING.
//   Drain(grace)  health NOT_SERVING, new requests UNAVAILABLE, accepted ones run to their end;
//                 those still running when `grace` passes end with finish CANCELLED and status
//                 UNAVAILABLE.
//   Shutdown()    stops the gRPC server (waits for the streams' last writes).
// The worker given to SetWorker must outlive Shutdown().
//
// Thread-safe.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "inference_service/inference_worker.h"
#include "inference_service/serving_metrics.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace kvshare {

class InferenceServiceImpl;

class InferenceServer {
 public:
  // Listens on `address` ("host:port"; port 0 picks a free one). `metrics` may be null and
  // must outlive the server.
  static absl::StatusOr<std::unique_ptr<InferenceServer>> Start(const std::string& address,
                                                                ServingMetrics* metrics);
  ~InferenceServer();

  int port() const { return port_; }
  void SetWorker(InferenceWorker* worker);
  // What GetLoad's control_plane says (health details); called on every GetLoad. Set before
  // SetWorker.
  void SetControlPlaneStatus(std::function<std::string()> status);
  // True when every accepted request finished within `grace`.
  bool Drain(absl::Duration grace);
  void Shutdown(absl::Duration deadline = absl::Seconds(5));

 private:
  InferenceServer() = default;
  void SetServing(bool serving);

  std::unique_ptr<InferenceServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::atomic<bool> shut_down_{false};
};

}  // namespace kvshare
