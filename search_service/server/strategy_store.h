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
//   - Output projections (issue 18) are kept content-addressed beside the records, by their
//     sha256 (which is part of the strategy id): Publish of a strategy that carries them stores
//     the blob first, durably, then the record, so a record never names a blob the store lacks;
//     a record read back carries its projections, checked against the hash. PutProjections
//     stores a blob ahead of its strategy (a publisher's upload); blobs are never removed.
// Implementations: DirectoryStrategyStore (the embedded default, crash-safe files) and
// InMemoryStrategyStore (a fake for tests). All methods are thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/strategy/projections_header.h"
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
  // Stores a projections blob under its sha256 (durably, for stores that persist); storing one
  // already held is a no-op.
  virtual absl::Status PutProjections(std::shared_ptr<const OutputProjections> projections) = 0;
  // The blob `header` names, checked against its hash. NotFound naming the hash when the store
  // does not hold it; DataLoss for stored bytes that do not match it.
  virtual absl::StatusOr<std::shared_ptr<const OutputProjections>> GetProjections(
      const ProjectionsHeader& header) const = 0;
};

// What every store answers for a blob it does not hold.
inline absl::Status ProjectionsNotFound(const ProjectionsHeader& header) {
  return absl::NotFoundError(absl::StrCat("output projections ", header.sha256.substr(0, 64),
                                          " are not in the registry (upload them first)"));
}

}  // namespace kvshare
