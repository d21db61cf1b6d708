#include "search_service/server/strategy_registry_service.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/limits.h"
#include "common/util/exception_status.h"
#include "common/util/excerpt.h"
#include "proto/wire/strategy_wire.h"
#include "search_service/server/registry_wire.h"
#include "service_runtime/grpc_status.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

bool IsFingerprint(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

using runtime::Answer;

// A string request field within `limit` bytes; the value is echoed cut to kMaxEchoBytes.
absl::Status CheckSize(const std::string& field, const std::string& value, size_t limit) {
  if (value.size() <= limit) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat("%s \"%s\" is %d bytes; at most %d", field,
                                                    Excerpt(value), value.size(), limit));
}

absl::Status Prefixed(const std::string& prefix, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrFormat("%s: %s", prefix, s.message()));
}

}  // namespace

absl::StatusOr<std::string> StrategyRegistryService::ResolveModel(const std::string& model,
                                                                  const std::string& field) {
  if (model.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s is empty; give a model fingerprint or name", field));
  }
  if (absl::Status s = CheckSize(field, model, kMaxNameBytes); !s.ok()) return s;
  if (IsFingerprint(model)) return model;
  if (catalog_->HasModel(model)) {
    auto loaded = catalog_->GetModel(model);
    if (!loaded.ok()) return Prefixed(field, loaded.status());
    return (*loaded)->model->fingerprint();
  }
  std::set<std::string> fingerprints;
  for (const StrategyRecord& r : store_->List("")) {
    if (r.model_name == model) fingerprints.insert(r.model_fingerprint);
  }
  if (fingerprints.size() == 1) return *fingerprints.begin();
  if (fingerprints.empty()) {
    return absl::NotFoundError(absl::StrFormat(
        "%s '%s' is not a fingerprint, a catalog model (%s) or a name strategies were "
        "published under",
        field, model, absl::StrJoin(catalog_->model_names(), ", ")));
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("%s '%s' names %d models (fingerprints %s); give the fingerprint", field,
                      model, fingerprints.size(), absl::StrJoin(fingerprints, ", ")));
}

absl::Status StrategyRegistryService::CheckFitsModel(const SharingStrategy& strategy,
                                                     const std::string& model_name) {
  // The model named, when it is a catalog model: layers and fingerprint must both fit.
  if (catalog_->HasModel(model_name)) {
    auto loaded = catalog_->GetModel(model_name);
    if (!loaded.ok()) return Prefixed("model_name", loaded.status());
    const Model& model = *(*loaded)->model;
    absl::Status s = strategy.ValidateFor(model.config(), model.fingerprint());
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat("model_name: ", s.message()));
    return absl::OkStatus();
  }
  // Otherwise the model the fingerprint names, if a catalog model already loaded is it or an
  // earlier version was published for it: the layer count must be that model's.
  int model_layers = 0;
  std::string known_from;
  for (const std::string& name : catalog_->loaded_model_names()) {
    auto loaded = catalog_->GetModel(name);
    if (loaded.ok() && (*loaded)->model->fingerprint() == strategy.model_fingerprint()) {
      model_layers = (*loaded)->model->config().n_layers;
      known_from = absl::StrFormat("catalog model '%s'", name);
    }
  }
  if (model_layers == 0) {
    const std::vector<StrategyRecord> earlier = store_->List(strategy.model_fingerprint());
    if (!earlier.empty()) {
      model_layers = earlier.front().strategy->n_layers();
      known_from = absl::StrFormat("version 1 of model %s", strategy.model_fingerprint());
    }
  }
  if (model_layers != 0 && strategy.n_layers() != model_layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "strategy.kv_source has %d layers; the model (fingerprint %s, %s) has %d",
        strategy.n_layers(), strategy.model_fingerprint(), known_from, model_layers));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::PublishStrategyResponse> StrategyRegistryService::Publish(
    const v1::PublishStrategyRequest& request) {
  if (!request.has_strategy()) return absl::InvalidArgumentError("strategy is missing");
  if (absl::Status s = CheckSize("model_name", request.model_name(), kMaxNameBytes); !s.ok()) {
    return s;
  }
  auto strategy = FromProto(request.strategy(),
                            [this](const ProjectionsHeader& h)
                                -> absl::StatusOr<std::shared_ptr<const OutputProjections>> {
                              auto p = blobs_.Resolve(h);
                              if (absl::IsNotFound(p.status()))
                                return absl::FailedPreconditionError(p.status().message());
                              return p;
                            });
  if (!strategy.ok()) return Prefixed("strategy", strategy.status());
  if (absl::Status s = CheckFitsModel(*strategy, request.model_name()); !s.ok()) return s;
  auto outcome = store_->Publish(std::make_shared<const SharingStrategy>(std::move(*strategy)),
                                 {request.model_name(), ""});
  if (!outcome.ok()) return outcome.status();
  if (outcome->created) {
    spdlog::info("event=strategy_published model={} fingerprint={} version={} strategy_id={}",
                 outcome->record.model_name, outcome->record.model_fingerprint.substr(0, 16),
                 outcome->record.version, outcome->record.strategy->id().substr(0, 16));
    if (metrics_ != nullptr) metrics_->strategies_published.Increment();
  }
  if (metrics_ != nullptr) metrics_->strategy_records.Set(double(store_->List("").size()));
  v1::PublishStrategyResponse response;
  ToProto(outcome->record, response.mutable_record());
  response.set_created(outcome->created);
  return response;
}

absl::StatusOr<v1::StrategyRecord> StrategyRegistryService::Get(
    const v1::GetStrategyRequest& request) {
  absl::StatusOr<StrategyRecord> record;
  switch (request.selector_case()) {
    case v1::GetStrategyRequest::kModelVersion: {
      const v1::ModelVersion& mv = request.model_version();
      auto fingerprint = ResolveModel(mv.model(), "model_version.model");
      if (!fingerprint.ok()) return fingerprint.status();
      if (mv.version() < 1) {
        return absl::InvalidArgumentError(
            absl::StrFormat("model_version.version %d must be >= 1", mv.version()));
      }
      record = store_->Get(*fingerprint, mv.version());
      break;
    }
    case v1::GetStrategyRequest::kStrategyId:
      if (request.strategy_id().empty()) {
        return absl::InvalidArgumentError("strategy_id is empty");
      }
      if (absl::Status s = CheckSize("strategy_id", request.strategy_id(), kMaxIdBytes); !s.ok()) {
        return s;
      }
      record = store_->GetById(request.strategy_id());
      break;
    case v1::GetStrategyRequest::SELECTOR_NOT_SET:
      return absl::InvalidArgumentError("give model_version or strategy_id");
  }
  if (!record.ok()) return record.status();
  v1::StrategyRecord out;
  ToProto(*record, &out);
  return out;
}

absl::StatusOr<v1::ListStrategiesResponse> StrategyRegistryService::List(
    const v1::ListStrategiesRequest& request) {
  std::string fingerprint;
  if (!request.model().empty()) {
    auto resolved = ResolveModel(request.model(), "model");
    if (!resolved.ok()) return resolved.status();
    fingerprint = *resolved;
  }
  v1::ListStrategiesResponse out;
  for (const StrategyRecord& r : store_->List(fingerprint)) {
    if (r.deprecated && !request.include_deprecated()) continue;
    ToProto(r, out.add_records());
  }
  return out;
}

absl::StatusOr<v1::StrategyRecord> StrategyRegistryService::Deprecate(
    const v1::DeprecateStrategyRequest& request) {
  if (!request.has_model_version()) return absl::InvalidArgumentError("model_version is missing");
  if (absl::Status s = CheckSize("reason", request.reason(), kMaxTextFieldBytes); !s.ok()) {
    return s;
  }
  const v1::ModelVersion& mv = request.model_version();
  auto fingerprint = ResolveModel(mv.model(), "model_version.model");
  if (!fingerprint.ok()) return fingerprint.status();
  if (mv.version() < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("model_version.version %d must be >= 1", mv.version()));
  }
  auto record = store_->Deprecate(*fingerprint, mv.version(), request.reason());
  if (!record.ok()) return record.status();
  spdlog::info("event=strategy_deprecated fingerprint={} version={} reason={}",
               fingerprint->substr(0, 16), mv.version(),
               runtime::LogValue(record->deprecation_reason));
  v1::StrategyRecord out;
  ToProto(*record, &out);
  return out;
}

grpc::ServerUnaryReactor* StrategyRegistryService::PublishStrategy(
    grpc::CallbackServerContext* context, const v1::PublishStrategyRequest* request,
    v1::PublishStrategyResponse* response) {
  return Answer(context, CatchExceptions("PublishStrategy", [&] { return Publish(*request); }),
                response);
}

grpc::ServerUnaryReactor* StrategyRegistryService::GetStrategy(
    grpc::CallbackServerContext* context, const v1::GetStrategyRequest* request,
    v1::StrategyRecord* response) {
  return Answer(context, CatchExceptions("GetStrategy", [&] { return Get(*request); }), response);
}

grpc::ServerUnaryReactor* StrategyRegistryService::ListStrategies(
    grpc::CallbackServerContext* context, const v1::ListStrategiesRequest* request,
    v1::ListStrategiesResponse* response) {
  return Answer(context, CatchExceptions("ListStrategies", [&] { return List(*request); }),
                response);
}

grpc::ServerUnaryReactor* StrategyRegistryService::DeprecateStrategy(
    grpc::CallbackServerContext* context, const v1::DeprecateStrategyRequest* request,
    v1::StrategyRecord* response) {
  return Answer(context, CatchExceptions("DeprecateStrategy", [&] { return Deprecate(*request); }),
                response);
}

grpc::ServerUnaryReactor* StrategyRegistryService::UploadProjections(
    grpc::CallbackServerContext* context, const v1::UploadProjectionsRequest* request,
    v1::UploadProjectionsResponse* response) {
  return Answer(context,
                CatchExceptions("UploadProjections", [&] { return blobs_.Upload(*request); }),
                response);
}

grpc::ServerUnaryReactor* StrategyRegistryService::GetProjections(
    grpc::CallbackServerContext* context, const v1::GetProjectionsRequest* request,
    v1::GetProjectionsResponse* response) {
  return Answer(context, CatchExceptions("GetProjections", [&] { return blobs_.Get(*request); }),
                response);
}

}  // namespace kvshare
