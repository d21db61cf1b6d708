#include "common/engine/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace kvshare {

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(Backend& backend, KvGeometry g,
                                                         int64_t num_blocks) {
  if (num_blocks <= 0 || num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KV pool: %d blocks requested, must be in [1, %d]", num_blocks, INT32_MAX));
  }
  absl::Status valid = ValidateKvGeometry(g);
  if (valid.ok()) valid = backend.SupportsKvType(g.type);
  if (!valid.ok()) return valid;
  std::unique_ptr<KvCache> cache(new KvCache(backend));
  cache->geometry_ = g;
  cache->total_blocks_ = num_blocks;
  auto pool = backend.Allocate(static_cast<size_t>(num_blocks * g.block_bytes()));
  if (!pool.ok()) return pool.status();
  cache->pool_ = std::move(*pool);
  cache->free_list_.reserve(num_blocks);
  // LIFO free list handing out low ids first.
  for (int64_t b = num_blocks - 1; b >= 0; --b)
    cache->free_list_.push_back(static_cast<int32_t>(b));
  return cache;
}

int64_t KvCache::BlocksFor(const SharingStrategy& strategy, int64_t tokens) const {
  const int64_t per_layer = (tokens + geometry_.block_tokens - 1) / geometry_.block_tokens;
  return per_layer * strategy.owning_layers();
}

SeqId KvCache::AddSequence(std::shared_ptr<const SharingStrategy> strategy) {
  const SeqId id = next_id_++;
  Sequence& s = seqs_[id];
  s.tables.resize(strategy->n_layers());
  s.strategy = std::move(strategy);
  return id;
}

void KvCache::RemoveSequence(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (auto& table : it->second.tables) {
    for (int32_t b : table) free_list_.push_back(b);
  }
  if (it->second.tails != nullptr) tail_bytes_in_use_ -= it->second.tails->size();
  seqs_.erase(it);
}

int64_t KvCache::MissingBlocks(SeqId seq, int64_t tokens) const {
  const Sequence& s = seqs_.at(seq);
  const int64_t want = (tokens + geometry_.block_tokens - 1) / geometry_.block_tokens;
  int64_t missing = 0;
  for (int l = 0; l < s.strategy->n_layers(); ++l) {
    if (s.strategy->owns(l)) missing += std::max<int64_t>(0, want - int64_t(s.tables[l].size()));
  }
  return missing;
}

absl::Status KvCache::Reserve(SeqId seq, int64_t tokens) {
  Sequence& s = seqs_.at(seq);
  const int64_t want = (tokens + geometry_.block_tokens - 1) / geometry_.block_tokens;
  const int64_t missing = MissingBlocks(seq, tokens);
  if (missing > free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "KV pool: %d more blocks needed for %d tokens (%d owning layers), %d of %d free", missing,
        tokens, s.strategy->owning_layers(), free_blocks(), total_blocks_));
  }
  if (geometry_.tail_bytes() > 0 && s.tails == nullptr && tokens > 0) {
    const int64_t bytes = geometry_.tail_bytes() * s.strategy->owning_layers();
    auto tails = backend_.Allocate(static_cast<size_t>(bytes));
    if (!tails.ok()) return tails.status();
    s.tails = std::move(*tails);
    tail_bytes_in_use_ += bytes;
    s.tail_of.assign(s.strategy->n_layers(), nullptr);
    int64_t next = 0;
    for (int l = 0; l < s.strategy->n_layers(); ++l) {
      if (s.strategy->owns(l)) {
        s.tail_of[l] = static_cast<uint8_t*>(s.tails->data()) + next++ * geometry_.tail_bytes();
      }
    }
  }
  for (int l = 0; l < s.strategy->n_layers(); ++l) {
    if (!s.strategy->owns(l)) continue;
    while (int64_t(s.tables[l].size()) < want) {
      s.tables[l].push_back(free_list_.back());
      free_list_.pop_back();
    }
  }
  return absl::OkStatus();
}

int64_t KvCache::length(SeqId seq) const { return seqs_.at(seq).length; }
void KvCache::set_length(SeqId seq, int64_t length) { seqs_.at(seq).length = length; }
const SharingStrategy& KvCache::strategy(SeqId seq) const { return *seqs_.at(seq).strategy; }

const std::vector<int32_t>& KvCache::TableForLayer(SeqId seq, int layer) const {
  const Sequence& s = seqs_.at(seq);
  static const std::vector<int32_t> kNone;
  if (s.strategy->drops(layer)) return kNone;  // a dropped layer reads no cache
  // A sharing layer attends over its source's cache (kv_source[l] is always a root).
  return s.tables[s.strategy->source(layer)];
}

void* KvCache::TailForLayer(SeqId seq, int layer) const {
  const Sequence& s = seqs_.at(seq);
  return s.tail_of.empty() ? nullptr : s.tail_of[s.strategy->source(layer)];
}

}  // namespace kvshare
