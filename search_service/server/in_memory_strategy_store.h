// A StrategyStore in memory: the same contract as the directory store, minus durability.
// For unit tests of code that uses a store. Thread-safe.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "search_service/server/strategy_index.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

class InMemoryStrategyStore : public StrategyStore {
 public:
  absl::StatusOr<PublishOutcome> Publish(std::shared_ptr<const SharingStrategy> strategy,
                                         const PublishInfo& info) override;
  absl::StatusOr<StrategyRecord> Get(const std::string& model_fingerprint,
                                     uint64_t version) const override;
  absl::StatusOr<StrategyRecord> GetById(const std::string& strategy_id) const override;
  std::vector<StrategyRecord> List(const std::string& model_fingerprint) const override;
  absl::StatusOr<StrategyRecord> Deprecate(const std::string& model_fingerprint, uint64_t version,
                                           const std::string& reason) override;
  absl::Status PutProjections(std::shared_ptr<const OutputProjections> projections) override;
  absl::StatusOr<std::shared_ptr<const OutputProjections>> GetProjections(
      const ProjectionsHeader& header) const override;

 private:
  mutable absl::Mutex mu_;
  StrategyIndex index_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<const OutputProjections>> projections_
      ABSL_GUARDED_BY(mu_);  // by sha256
};

}  // namespace kvshare
