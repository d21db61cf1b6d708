#include "search_service/server/strategy_index.h"

#include "absl/strings/str_format.h"

namespace kvshare {

const StrategyRecord* StrategyIndex::Find(const std::string& model_fingerprint,
                                          uint64_t version) const {
  auto it = by_model_.find(model_fingerprint);
  if (it == by_model_.end() || version < 1 || version > it->second.size()) return nullptr;
  return &it->second[version - 1];
}

const StrategyRecord* StrategyIndex::FindById(const std::string& strategy_id) const {
  auto it = by_id_.find(strategy_id);
  if (it == by_id_.end()) return nullptr;
  return Find(it->second.first, it->second.second);
}

uint64_t StrategyIndex::NextVersion(const std::string& model_fingerprint) const {
  auto it = by_model_.find(model_fingerprint);
  return it == by_model_.end() ? 1 : it->second.size() + 1;
}

absl::Status StrategyIndex::Add(StrategyRecord record) {
  const uint64_t next = NextVersion(record.model_fingerprint);
  if (record.version != next) {
    return absl::FailedPreconditionError(
        absl::StrFormat("model %s: version %d is not the next one (%d); versions are dense",
                        record.model_fingerprint, record.version, next));
  }
  const std::string& id = record.strategy->id();
  if (const StrategyRecord* existing = FindById(id)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("strategy %s is already version %d of model %s", id, existing->version,
                        existing->model_fingerprint));
  }
  by_id_[id] = {record.model_fingerprint, record.version};
  by_model_[record.model_fingerprint].push_back(std::move(record));
  return absl::OkStatus();
}

void StrategyIndex::MarkDeprecated(const std::string& model_fingerprint, uint64_t version,
                                   const std::string& reason, absl::Time when) {
  StrategyRecord& r = by_model_.at(model_fingerprint).at(version - 1);
  r.deprecated = true;
  r.deprecation_reason = reason;
  r.deprecate_time = when;
}

std::vector<StrategyRecord> StrategyIndex::List(const std::string& model_fingerprint) const {
  std::vector<StrategyRecord> out;
  for (const auto& [fingerprint, records] : by_model_) {
    if (!model_fingerprint.empty() && fingerprint != model_fingerprint) continue;
    out.insert(out.end(), records.begin(), records.end());
  }
  return out;
}

absl::StatusOr<StrategyRecord> StrategyIndex::Get(const std::string& model_fingerprint,
                                                  uint64_t version) const {
  const StrategyRecord* r = Find(model_fingerprint, version);
  if (r == nullptr) return NotFoundVersion(model_fingerprint, version);
  return *r;
}

absl::StatusOr<StrategyRecord> StrategyIndex::GetById(const std::string& strategy_id) const {
  const StrategyRecord* r = FindById(strategy_id);
  if (r == nullptr) {
    return absl::NotFoundError(absl::StrFormat("no strategy with id %s", strategy_id));
  }
  return *r;
}

absl::Status StrategyIndex::NotFoundVersion(const std::string& model_fingerprint,
                                            uint64_t version) {
  return absl::NotFoundError(
      absl::StrFormat("model %s has no strategy version %d", model_fingerprint, version));
}

absl::Status StrategyIndex::CheckPublishable(const SharingStrategy* strategy) {
  if (strategy == nullptr) return absl::InvalidArgumentError("strategy is missing");
  const std::string& fp = strategy->model_fingerprint();
  if (fp.empty()) {
    return absl::InvalidArgumentError(
        "strategy.model_fingerprint is empty: a published strategy must name its model");
  }
  // Fingerprints are hex SHA-256; anything else is not a model's (and must not reach a path).
  bool hex = fp.size() == 64;
  for (char c : fp) hex = hex && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  if (!hex) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "strategy.model_fingerprint '%s' is not a model fingerprint (64 lowercase hex digits)",
        fp.substr(0, 80)));
  }
  return absl::OkStatus();
}

}  // namespace kvshare
