// StrategyStore: the registry's record of published strategies (docs/ARCHITECTURE.md, The control
// plane).
//
// Contract, for every implementation:
//   - Each model (keyed by its fingerprint) has versions 1, 2, 3, ... in publish order: dense
//     and monotonic, also under concurrent publishes.
//   - A record never changes once written, except for its deprecation mark; a published
//     version is never lost (Publish returns after the record is durable, for stores that
//     persist).
//   - Content is deduplicated: publishing a strategy whose id is already present returns the
//     existing record (created = false), deprecated or not.
// Implementations: DirectoryStrategyStore (the embedded default, crash-safe files) and
// InMemoryStrategyStore (a fake for tests). All methods are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/strategy/sharing_strategy.h"

namespace kvshare {

struct StrategyRecord {
  std::string model_fingerprint;
  std::string model_name;  // a label: the name it was published under
  uint64_t version = 0;
  std::shared_ptr<const SharingStrategy> strategy;
  absl::Time publish_time = absl::UnixEpoch();
  std::string source_job_id;  // the search job that produced it, if any
  bool deprecated = false;
  std::string deprecation_reason;
  absl::Time deprecate_time = absl::UnixEpoch();
};

struct PublishInfo {
  std::string model_name;
  std::string source_job_id;
};

struct PublishOutcome {
  StrategyRecord record;
  bool created = false;  // false: the same content was already published
};

class StrategyStore {
 public:
  virtual ~StrategyStore() = default;

  // Assigns the strategy's model its next version (the model is strategy->model_fingerprint()).
  // InvalidArgument for a strategy with no model fingerprint; the store's own errors
  // (e.g. a failed write) leave it unchanged.
  virtual absl::StatusOr<PublishOutcome> Publish(std::shared_ptr<const SharingStrategy> strategy,
                                                 const PublishInfo& info) = 0;
  // NotFound naming the model and version.
  virtual absl::StatusOr<StrategyRecord> Get(const std::string& model_fingerprint,
                                             uint64_t version) const = 0;
  // NotFound naming the id.
  virtual absl::StatusOr<StrategyRecord> GetById(const std::string& strategy_id) const = 0;
  // One model's records (every model's when model_fingerprint is empty), ordered by
  // fingerprint, then version ascending.
  virtual std::vector<StrategyRecord> List(const std::string& model_fingerprint) const = 0;
  // Marks a version deprecated; a version already deprecated keeps its first reason and time.
  // NotFound naming the model and version.
  virtual absl::StatusOr<StrategyRecord> Deprecate(const std::string& model_fingerprint,
                                                   uint64_t version, const std::string& reason) = 0;
};

}  // namespace kvshare
