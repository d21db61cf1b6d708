// kvshare.v1.Rollouts on the gRPC callback API over a RolloutController: rollouts, pins and
// the fleet view, with server-streaming watches that write a fresh snapshot after each change
// (coalescing changes that happen while a write is in flight). Models are named as in the
// registry (fingerprint or name), resolved by the StrategyRegistryService. Both must outlive
// the gRPC server. Thread-safe.
//
// CreateRollout passes the quality gate (quality_gate.h) with the catalog's budget for the
// model, and records the registry's quality probe of the target (probe_reference.h; measured
// on the calling thread, once per version) so that workers' probes are checked. A model the
// catalog lacks gets the default budget and no probe.
#pragma once

#include <memory>

#include "kvshare/v1/registry.grpc.pb.h"
#include "search_service/server/model_catalog.h"
#include "search_service/server/probe_reference.h"
#include "search_service/server/rollout_controller.h"
#include "search_service/server/strategy_registry_service.h"

namespace kvshare {

class RolloutService final : public v1::Rollouts::CallbackService {
 public:
  // `catalog` (may be null: default budgets, no probe) must outlive the service.
  // `probe_threads`: the CPU backend's for the probe (0 = all cores).
  RolloutService(RolloutController* controller, StrategyRegistryService* registry,
                 ModelCatalog* catalog = nullptr, int probe_threads = 0)
      : controller_(controller),
        registry_(registry),
        catalog_(catalog),
        probes_(catalog != nullptr ? std::make_unique<ProbeReference>(catalog, probe_threads)
                                   : nullptr) {}

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

  // The gate's answer for `record` (the model named `model_name` by the caller, or as
  // published).
  absl::StatusOr<QualityGateRecord> Gate(const StrategyRecord& record,
                                         const std::string& model_name, bool allow);

  RolloutController* const controller_;
  StrategyRegistryService* const registry_;
  ModelCatalog* const catalog_;
  const std::unique_ptr<ProbeReference> probes_;
};

}  // namespace kvshare
