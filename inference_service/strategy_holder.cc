#include "inference_service/strategy_holder.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvshare {

StrategyHolder::StrategyHolder(Validator validate, size_t keep_versions)
    : validate_(std::move(validate)), keep_versions_(keep_versions < 1 ? 1 : keep_versions) {}

absl::Status StrategyHolder::Publish(uint64_t version,
                                     std::shared_ptr<const SharingStrategy> strategy) {
  if (strategy == nullptr) return absl::InvalidArgumentError("strategy: null");
  if (validate_) {
    absl::Status s = validate_(*strategy);
    if (!s.ok()) return s;
  }
  VersionedStrategy published{version, std::move(strategy)};
  std::vector<std::function<void(const VersionedStrategy&)>> listeners;
  {
    absl::MutexLock lock(&mu_);
    if (!versions_.empty() && version <= versions_.back().version) {
      return absl::FailedPreconditionError(
          absl::StrFormat("strategy version %d is not newer than the current version %d", version,
                          versions_.back().version));
    }
    versions_.push_back(published);
    while (versions_.size() > keep_versions_) versions_.pop_front();
    listeners = listeners_;
  }
  for (const auto& listener : listeners) listener(published);
  return absl::OkStatus();
}

absl::Status StrategyHolder::Apply(uint64_t version,
                                   std::shared_ptr<const SharingStrategy> strategy) {
  if (strategy == nullptr) return absl::InvalidArgumentError("strategy: null");
  if (validate_) {
    absl::Status s = validate_(*strategy);
    if (!s.ok()) return s;
  }
  VersionedStrategy applied{version, std::move(strategy)};
  std::vector<std::function<void(const VersionedStrategy&)>> listeners;
  {
    absl::MutexLock lock(&mu_);
    if (!versions_.empty() && versions_.back().version == version &&
        versions_.back().strategy->id() == applied.strategy->id()) {
      return absl::OkStatus();  // already current: a replayed assignment
    }
    for (auto it = versions_.begin(); it != versions_.end(); ++it) {
      if (it->version == version) {
        versions_.erase(it);
        break;
      }
    }
    versions_.push_back(applied);
    while (versions_.size() > keep_versions_) versions_.pop_front();
    listeners = listeners_;
  }
  for (const auto& listener : listeners) listener(applied);
  return absl::OkStatus();
}

std::optional<VersionedStrategy> StrategyHolder::Current() const {
  absl::MutexLock lock(&mu_);
  if (versions_.empty()) return std::nullopt;
  return versions_.back();
}

absl::StatusOr<VersionedStrategy> StrategyHolder::Resolve(std::optional<uint64_t> pin) const {
  absl::MutexLock lock(&mu_);
  if (versions_.empty()) return absl::UnavailableError("no strategy applied yet");
  if (!pin.has_value()) return versions_.back();
  for (const VersionedStrategy& v : versions_) {
    if (v.version == *pin) return v;
  }
  std::vector<uint64_t> held;
  for (const VersionedStrategy& v : versions_) held.push_back(v.version);
  return UnknownVersionError(*pin, held);
}

std::vector<uint64_t> StrategyHolder::Versions() const {
  absl::MutexLock lock(&mu_);
  std::vector<uint64_t> out;
  for (const VersionedStrategy& v : versions_) out.push_back(v.version);
  return out;
}

void StrategyHolder::AddListener(std::function<void(const VersionedStrategy&)> listener) {
  absl::MutexLock lock(&mu_);
  listeners_.push_back(std::move(listener));
}

absl::Status StrategyHolder::UnknownVersionError(uint64_t version,
                                                 const std::vector<uint64_t>& held) {
  return absl::FailedPreconditionError(
      absl::StrFormat("strategy_version %d is not held by this worker (held: [%s])", version,
                      absl::StrJoin(held, ", ")));
}

}  // namespace kvshare
