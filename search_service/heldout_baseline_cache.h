// The unshared model's held-out pass, kept across searches (issue 17, docs/METHOD.md §6).
//
// Every search measures its result against the unshared model's perplexity on the held-out
// slice (QualityMeter's baseline): a pass as long as one plan check — 17 s of SmolLM2's 16,384
// tokens on 2 cores, against a 1% plan search of ~60 s — and the same for every search of one
// model, slice and pool. The search service keeps one cache for all of its jobs, so only a
// model's first job on a slice pays for it.
//
// An entry is keyed by everything the pass's figures depend on: the model's fingerprint (weights
// and tokenizer), the slice's hash (its ids and context), the KV block size (attention chunks by
// block) and how quantized matmuls take activations. The thread count is not in it: a window's
// figures do not depend on it (common/engine/perplexity.h). The CPU backend computes every
// entry (QualityMeter's engines are CPU engines) in this process, so the ISA is fixed too.
//
// Thread-safe. Holds at most `capacity` entries (each a few hundred bytes: one sum per window),
// dropping the least recently used.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <optional>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "common/engine/perplexity.h"
#include "common/model/model.h"
#include "kernels/cpu/matmul.h"
#include "search_service/heldout_quality.h"

namespace kvshare {

class HeldoutBaselineCache {
 public:
  // `on_lookup` (optional) hears of every Find, hit or not (the service's metrics), outside the
  // lock.
  using LookupFn = std::function<void(bool hit)>;
  explicit HeldoutBaselineCache(size_t capacity = 64, LookupFn on_lookup = nullptr)
      : capacity_(capacity), on_lookup_(std::move(on_lookup)) {}

  // The key of the unshared pass of `model` over `slice` with a pool of `block_tokens` blocks
  // and `activations`.
  static std::string Key(const Model& model, const HeldoutSlice& slice, int block_tokens,
                         cpu::Activations activations);

  // The pass kept under `key`, if any (counted as a hit or a miss).
  std::optional<PerplexityResult> Find(const std::string& key);
  // Keeps a whole pass (a cancelled one never reaches here: QualityMeter fails instead).
  void Insert(const std::string& key, const PerplexityResult& baseline);

  int64_t hits() const;
  int64_t misses() const;

 private:
  const size_t capacity_;
  const LookupFn on_lookup_;
  mutable absl::Mutex mu_;
  // Most recently used first.
  std::list<std::pair<std::string, PerplexityResult>> entries_ ABSL_GUARDED_BY(mu_);
  int64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvshare
