// The registry's figure of the quality probe (common/engine/quality_probe.h) for a strategy:
// measured on the CPU backend with the exact fp32 KV cache, the model found in the catalog by
// the strategy's fingerprint, once per strategy id and then kept. Workers' probes are compared
// against it (rollout_policy.h, ProbeDisagreement).
//
// Thread-safe: measurements are serialised; one blocks for a forward pass over the probe's
// tokens (and, the first time a model is needed, for the catalog to load it).
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/engine/quality_probe.h"
#include "kvshare/v1/registry.pb.h"
#include "search_service/server/model_catalog.h"

namespace kvshare {

class ProbeReference {
 public:
  // `catalog` must outlive this. `threads`: the CPU backend's (0 = all cores).
  ProbeReference(ModelCatalog* catalog, int threads) : catalog_(catalog), threads_(threads) {}

  // The probe of `strategy`. The model is the catalog entry `model_name` when its fingerprint
  // is the strategy's, else the first catalog model that has it; NotFound naming the
  // fingerprint when none does.
  absl::StatusOr<v1::QualityProbe> For(const SharingStrategy& strategy,
                                       const std::string& model_name);

 private:
  struct ModelProbe {
    std::shared_ptr<const CatalogModel> model;  // keeps the model the probe reads alive
    std::unique_ptr<QualityProbe> probe;
  };
  // The probe engine of the catalog model with `fingerprint`.
  absl::StatusOr<ModelProbe*> ProbeFor(const std::string& fingerprint,
                                       const std::string& model_name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  ModelCatalog* const catalog_;
  const int threads_;
  absl::Mutex mu_;
  std::map<std::string, ModelProbe> probes_ ABSL_GUARDED_BY(mu_);         // by fingerprint
  std::map<std::string, v1::QualityProbe> figures_ ABSL_GUARDED_BY(mu_);  // by strategy id
};

}  // namespace kvshare
