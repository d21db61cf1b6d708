// The strategy versions a worker can run, and which one new requests take.
//
// The seam for a strategy that changes at run time (docs/ARCHITECTURE.md, Serving: "a new version
// applies to new requests with no restart and no drain"): whoever decides the version — the
// --strategy flag today, the control-plane subscriber later — calls Publish(); each request
// resolves its strategy once, at admission to the worker, and keeps the shared_ptr for its whole
// life, so in-flight sequences finish on the version they started with. A request may pin a version
// the holder still has.
//
// Thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/strategy/sharing_strategy.h"

namespace kvshare {

struct VersionedStrategy {
  uint64_t version = 0;
  std::shared_ptr<const SharingStrategy> strategy;
};

class StrategyHolder {
 public:
  // `validate` checks a strategy fits the worker's model (ValidateFor); Publish() refuses
  // what it rejects. `keep_versions` bounds how many past versions stay pinnable.
  using Validator = std::function<absl::Status(const SharingStrategy&)>;
  explicit StrategyHolder(Validator validate, size_t keep_versions = 8);

  // Makes `strategy` the current version. Versions only move forward: a version at or below
  // the current one is FailedPrecondition (a replayed or out-of-order assignment); a strategy
  // the validator rejects keeps the current one (the caller NACKs with this status).
  absl::Status Publish(uint64_t version, std::shared_ptr<const SharingStrategy> strategy);
  // The control plane's path (inference_service/strategy_subscriber.h): makes `strategy` the
  // current version whatever the order — a rollback to an older version is an assignment like
  // any other. A version already held is replaced by the assigned content (the registry is
  // authoritative) and becomes current; in-flight requests keep the shared_ptr they resolved.
  // A strategy the validator rejects keeps the current one.
  absl::Status Apply(uint64_t version, std::shared_ptr<const SharingStrategy> strategy);

  // The version new requests take; nullopt until the first Publish (the worker is not ready).
  std::optional<VersionedStrategy> Current() const;
  // `pin` when set (it must be held), else the current version.
  absl::StatusOr<VersionedStrategy> Resolve(std::optional<uint64_t> pin) const;
  // Pinnable versions, least recently made current first (the current one last).
  std::vector<uint64_t> Versions() const;

  // Called (outside the lock) after every successful Publish: metrics, logs.
  void AddListener(std::function<void(const VersionedStrategy&)> listener);

  // The one place that decides what pinning an unknown version is: FAILED_PRECONDITION (the
  // version may well exist in the fleet; this worker does not hold it now).
  static absl::Status UnknownVersionError(uint64_t version, const std::vector<uint64_t>& held);

 private:
  const Validator validate_;
  const size_t keep_versions_;
  mutable absl::Mutex mu_;
  std::deque<VersionedStrategy> versions_ ABSL_GUARDED_BY(mu_);  // ascending; back = current
  std::vector<std::function<void(const VersionedStrategy&)>> listeners_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvshare
