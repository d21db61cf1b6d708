// kvshare.v1.StrategyDistribution on the gRPC callback API: one bidirectional reactor per
// worker stream, feeding the RolloutController (hello, acks, load, disconnect) and writing the
// assignments it decides. The controller must outlive the gRPC server. Thread-safe.
#pragma once

#include "kvshare/v1/registry.grpc.pb.h"
#include "search_service/server/rollout_controller.h"

namespace kvshare {

class StrategyStreamService final : public v1::StrategyDistribution::CallbackService {
 public:
  explicit StrategyStreamService(RolloutController* controller) : controller_(controller) {}

  grpc::ServerBidiReactor<v1::WorkerMessage, v1::StrategyAssignment>* StreamStrategy(
      grpc::CallbackServerContext* context) override;

 private:
  RolloutController* const controller_;
};

}  // namespace kvshare
