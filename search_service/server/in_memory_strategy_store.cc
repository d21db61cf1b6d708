#include "search_service/server/in_memory_strategy_store.h"

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace kvshare {

absl::StatusOr<PublishOutcome> InMemoryStrategyStore::Publish(
    std::shared_ptr<const SharingStrategy> strategy, const PublishInfo& info) {
  absl::Status s = StrategyIndex::CheckPublishable(strategy.get());
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (const StrategyRecord* existing = index_.FindById(strategy->id())) {
    return PublishOutcome{*existing, false};
  }
  if (strategy->projections() != nullptr) {
    projections_.emplace(strategy->projections()->sha256(), strategy->projections());
  }
  StrategyRecord record;
  record.model_fingerprint = strategy->model_fingerprint();
  record.model_name = info.model_name;
  record.version = index_.NextVersion(record.model_fingerprint);
  record.strategy = std::move(strategy);
  record.publish_time = absl::Now();
  record.source_job_id = info.source_job_id;
  s = index_.Add(record);
  if (!s.ok()) return s;
  return PublishOutcome{std::move(record), true};
}

absl::StatusOr<StrategyRecord> InMemoryStrategyStore::Get(const std::string& model_fingerprint,
                                                          uint64_t version) const {
  absl::MutexLock lock(&mu_);
  return index_.Get(model_fingerprint, version);
}

absl::StatusOr<StrategyRecord> InMemoryStrategyStore::GetById(
    const std::string& strategy_id) const {
  absl::MutexLock lock(&mu_);
  return index_.GetById(strategy_id);
}

std::vector<StrategyRecord> InMemoryStrategyStore::List(
    const std::string& model_fingerprint) const {
  absl::MutexLock lock(&mu_);
  return index_.List(model_fingerprint);
}

absl::StatusOr<StrategyRecord> InMemoryStrategyStore::Deprecate(
    const std::string& model_fingerprint, uint64_t version, const std::string& reason) {
  absl::MutexLock lock(&mu_);
  const StrategyRecord* r = index_.Find(model_fingerprint, version);
  if (r == nullptr) return StrategyIndex::NotFoundVersion(model_fingerprint, version);
  if (!r->deprecated) index_.MarkDeprecated(model_fingerprint, version, reason, absl::Now());
  return *index_.Find(model_fingerprint, version);
}

absl::Status InMemoryStrategyStore::PutProjections(
    std::shared_ptr<const OutputProjections> projections) {
  if (projections == nullptr) return absl::InvalidArgumentError("projections is null");
  absl::MutexLock lock(&mu_);
  projections_.emplace(projections->sha256(), std::move(projections));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const OutputProjections>> InMemoryStrategyStore::GetProjections(
    const ProjectionsHeader& header) const {
  absl::MutexLock lock(&mu_);
  auto it = projections_.find(header.sha256);
  if (it == projections_.end()) return ProjectionsNotFound(header);
  return it->second;
}

}  // namespace kvshare
