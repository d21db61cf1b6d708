// kvshare.v1.Rollouts on the gRPC callback API over a RolloutController: rollouts, pins and
// the fleet view, with server-streaming watches that write a fresh snapshot after each change
// (coalescing changes that happen while a write is in flight). Models are named as in the
// registry (fingerprint or name), resolved by the StrategyRegistryService. Both must outlive
// the gRPC server. Thread-safe.
#pragma once

#include "kvshare/v1/registry.grpc.pb.h"
#include "search_service/server/rollout_controller.h"
#include "search_service/server/strategy_registry_service.h"

namespace kvshare {

class RolloutService final : public v1::Rollouts::CallbackService {
 public:
  RolloutService(RolloutController* controller, StrategyRegistryService* registry)
      : controller_(controller), registry_(registry) {}

  grpc::ServerUnaryReactor* CreateRollout(grpc::CallbackServerContext* context,
                                          const v1::CreateRolloutRequest* request,
                                          v1::Rollout* response) override;
  grpc::ServerUnaryReactor* GetRollout(grpc::CallbackServerContext* context,
                                       const v1::RolloutRef* request,
                                       v1::Rollout* response) override;
  grpc::ServerUnaryReactor* ListRollouts(grpc::CallbackServerContext* context,
                                         const v1::ListRolloutsRequest* request,
                                         v1::ListRolloutsResponse* response) override;
  grpc::ServerWriteReactor<v1::Rollout>* WatchRollout(grpc::CallbackServerContext* context,
                                                      const v1::RolloutRef* request) override;
  grpc::ServerUnaryReactor* PauseRollout(grpc::CallbackServerContext* context,
                                         const v1::RolloutRef* request,
                                         v1::Rollout* response) override;
  grpc::ServerUnaryReactor* ResumeRollout(grpc::CallbackServerContext* context,
                                          const v1::RolloutRef* request,
                                          v1::Rollout* response) override;
  grpc::ServerUnaryReactor* PromoteRollout(grpc::CallbackServerContext* context,
                                           const v1::RolloutRef* request,
                                           v1::Rollout* response) override;
  grpc::ServerUnaryReactor* AbortRollout(grpc::CallbackServerContext* context,
                                         const v1::RolloutRef* request,
                                         v1::Rollout* response) override;
  grpc::ServerUnaryReactor* SetPin(grpc::CallbackServerContext* context, const v1::Pin* request,
                                   v1::Pin* response) override;
  grpc::ServerUnaryReactor* ClearPin(grpc::CallbackServerContext* context, const v1::Pin* request,
                                     v1::ListPinsResponse* response) override;
  grpc::ServerUnaryReactor* ListPins(grpc::CallbackServerContext* context,
                                     const v1::ListPinsRequest* request,
                                     v1::ListPinsResponse* response) override;
  grpc::ServerUnaryReactor* GetFleetStatus(grpc::CallbackServerContext* context,
                                           const v1::GetFleetStatusRequest* request,
                                           v1::FleetStatus* response) override;
  grpc::ServerWriteReactor<v1::FleetStatus>* WatchFleet(
      grpc::CallbackServerContext* context, const v1::GetFleetStatusRequest* request) override;

 private:
  absl::StatusOr<v1::Pin> ResolvePin(const v1::Pin& pin);

  RolloutController* const controller_;
  StrategyRegistryService* const registry_;
};

}  // namespace kvshare
