#include "search_service/heldout_baseline_cache.h"

#include "absl/strings/str_format.h"

namespace kvshare {

std::string HeldoutBaselineCache::Key(const Model& model, const HeldoutSlice& slice,
                                      int block_tokens, cpu::Activations activations) {
  return absl::StrFormat("%s %s block=%d activations=%s", model.fingerprint(), slice.hash,
                         block_tokens, cpu::ActivationsName(activations));
}

std::optional<PerplexityResult> HeldoutBaselineCache::Find(const std::string& key) {
  std::optional<PerplexityResult> found;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->first != key) continue;
      entries_.splice(entries_.begin(), entries_, it);
      found = entries_.front().second;
      break;
    }
    ++(found.has_value() ? hits_ : misses_);
  }
  if (on_lookup_) on_lookup_(found.has_value());
  return found;
}

void HeldoutBaselineCache::Insert(const std::string& key, const PerplexityResult& baseline) {
  if (capacity_ == 0) return;
  absl::MutexLock lock(&mu_);
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->first == key) {
      entries_.erase(it);  // two jobs computed it side by side: the same figures
      break;
    }
  }
  entries_.emplace_front(key, baseline);
  while (entries_.size() > capacity_) entries_.pop_back();
}

int64_t HeldoutBaselineCache::hits() const {
  absl::MutexLock lock(&mu_);
  return hits_;
}

int64_t HeldoutBaselineCache::misses() const {
  absl::MutexLock lock(&mu_);
  return misses_;
}

}  // namespace kvshare
