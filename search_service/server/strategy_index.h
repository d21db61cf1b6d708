// The bookkeeping both strategy stores share: records by (model, version) and by strategy id,
// the next version per model, the uniqueness rules. Not thread-safe (the stores lock around
// it); holds no I/O.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

class StrategyIndex {
 public:
  const StrategyRecord* Find(const std::string& model_fingerprint, uint64_t version) const;
  const StrategyRecord* FindById(const std::string& strategy_id) const;
  // Copies of Find / FindById, or the NOT_FOUND every store gives.
  absl::StatusOr<StrategyRecord> Get(const std::string& model_fingerprint, uint64_t version) const;
  absl::StatusOr<StrategyRecord> GetById(const std::string& strategy_id) const;
  // 1 for a model with no versions.
  uint64_t NextVersion(const std::string& model_fingerprint) const;
  // Adds a record whose version must be NextVersion(its model) and whose strategy id must be
  // new (FailedPrecondition otherwise: the caller broke the contract or the data is damaged).
  absl::Status Add(StrategyRecord record);
  // Sets the deprecation mark of an existing record.
  void MarkDeprecated(const std::string& model_fingerprint, uint64_t version,
                      const std::string& reason, absl::Time when);
  std::vector<StrategyRecord> List(const std::string& model_fingerprint) const;
  size_t size() const { return by_id_.size(); }

  // The errors every store gives for the same mistakes.
  static absl::Status NotFoundVersion(const std::string& model_fingerprint, uint64_t version);
  static absl::Status CheckPublishable(const SharingStrategy* strategy);

 private:
  // Version v of a model is at [v - 1].
  std::map<std::string, std::vector<StrategyRecord>> by_model_;
  absl::flat_hash_map<std::string, std::pair<std::string, uint64_t>> by_id_;
};

}  // namespace kvshare
