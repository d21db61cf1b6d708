// kvshare.v1.StrategyRegistry on the gRPC callback API, over a StrategyStore.
//
// Models are named by fingerprint (64 hex digits) or by name: a catalog model's name resolves
// to its fingerprint (loading it if needed), any other name to the one model published under
// it. Request strings are bounded (common/limits.h): model names kMaxNameBytes, strategy ids
// kMaxIdBytes, deprecation reasons kMaxTextFieldBytes; a strategy's layer count must be its
// model's (CheckFitsModel). The store and catalog must outlive the gRPC server. Thread-safe.
#pragma once

#include "kvshare/v1/registry.grpc.pb.h"
#include "search_service/server/model_catalog.h"
#include "search_service/server/projection_blobs.h"
#include "search_service/server/search_metrics.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

class StrategyRegistryService final : public v1::StrategyRegistry::CallbackService {
 public:
  // `metrics` may be null.
  StrategyRegistryService(StrategyStore* store, ModelCatalog* catalog, SearchMetrics* metrics)
      : store_(store), catalog_(catalog), metrics_(metrics), blobs_(store) {}

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
  // Output projections blobs (projection_blobs.h). PublishStrategy resolves a strategy's
  // projections through them: FAILED_PRECONDITION for a blob not uploaded.
  grpc::ServerUnaryReactor* UploadProjections(grpc::CallbackServerContext* context,
                                              const v1::UploadProjectionsRequest* request,
                                              v1::UploadProjectionsResponse* response) override;
  grpc::ServerUnaryReactor* GetProjections(grpc::CallbackServerContext* context,
                                           const v1::GetProjectionsRequest* request,
                                           v1::GetProjectionsResponse* response) override;

  // The fingerprint `model` names (see above). `field` names it in errors.
  absl::StatusOr<std::string> ResolveModel(const std::string& model, const std::string& field);

 private:
  absl::StatusOr<v1::PublishStrategyResponse> Publish(const v1::PublishStrategyRequest& request);
  // InvalidArgument unless `strategy` fits its model: the catalog model `model_name` names
  // (layers and fingerprint), else the model of its fingerprint when a loaded catalog model or
  // an earlier published version tells its layer count. A model known from neither is not
  // checked (the registry also keeps strategies for models it does not serve).
  absl::Status CheckFitsModel(const SharingStrategy& strategy, const std::string& model_name);
  absl::StatusOr<v1::StrategyRecord> Get(const v1::GetStrategyRequest& request);
  absl::StatusOr<v1::ListStrategiesResponse> List(const v1::ListStrategiesRequest& request);
  absl::StatusOr<v1::StrategyRecord> Deprecate(const v1::DeprecateStrategyRequest& request);

  StrategyStore* const store_;
  ModelCatalog* const catalog_;
  SearchMetrics* const metrics_;
  ProjectionBlobs blobs_;
};

}  // namespace kvshare
