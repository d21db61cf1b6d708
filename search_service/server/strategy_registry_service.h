// kvshare.v1.StrategyRegistry on the gRPC callback API, over a StrategyStore.
//
// Models are named by fingerprint (64 hex digits) or by name: a catalog model's name resolves
// to its fingerprint (loading it if needed), any other name to the one model published under
// it. The store and catalog must outlive the gRPC server. Thread-safe.
#pragma once

#include "kvshare/v1/registry.grpc.pb.h"
#include "search_service/server/model_catalog.h"
#include "search_service/server/search_metrics.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

class StrategyRegistryService final : public v1::StrategyRegistry::CallbackService {
 public:
  // `metrics` may be null.
  StrategyRegistryService(StrategyStore* store, ModelCatalog* catalog, SearchMetrics* metrics)
      : store_(store), catalog_(catalog), metrics_(metrics) {}

  grpc::ServerUnaryReactor* PublishStrategy(grpc::CallbackServerContext* context,
                                            const v1::PublishStrategyRequest* request,
                                            v1::PublishStrategyResponse* response) override;
  grpc::ServerUnaryReactor* GetStrategy(grpc::CallbackServerContext* context,
                                        const v1::GetStrategyRequest* request,
                                        v1::StrategyRecord* response) override;
  grpc::ServerUnaryReactor* ListStrategies(grpc::CallbackServerContext* context,
                                           const v1::ListStrategiesRequest* request,
                                           v1::ListStrategiesResponse* response) override;
  grpc::ServerUnaryReactor* DeprecateStrategy(grpc::CallbackServerContext* context,
                                              const v1::DeprecateStrategyRequest* request,
                                              v1::StrategyRecord* response) override;

  // The fingerprint `model` names (see above). `field` names it in errors.
  absl::StatusOr<std::string> ResolveModel(const std::string& model, const std::string& field);

 private:
  absl::StatusOr<v1::PublishStrategyResponse> Publish(const v1::PublishStrategyRequest& request);
  absl::StatusOr<v1::StrategyRecord> Get(const v1::GetStrategyRequest& request);
  absl::StatusOr<v1::ListStrategiesResponse> List(const v1::ListStrategiesRequest& request);
  absl::StatusOr<v1::StrategyRecord> Deprecate(const v1::DeprecateStrategyRequest& request);

  StrategyStore* const store_;
  ModelCatalog* const catalog_;
  SearchMetrics* const metrics_;
};

}  // namespace kvshare
