#include "common/engine/kv_cache.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace kvshare {

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(Backend& backend, KvGeometry g,
                                                         int64_t num_blocks) {
  return Create(backend, g, num_blocks, {});
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(Backend& backend, KvGeometry g,
                                                         int64_t num_blocks,
                                                         const std::vector<KvType>& also) {
  auto pool = KvPool::Create(backend, g, num_blocks, also);
  if (!pool.ok()) return pool.status();
  std::unique_ptr<KvCache> cache(new KvCache(backend));
  cache->geometry_ = g;
  cache->pool_ = std::move(*pool);
  return cache;
}

absl::Status KvCache::CheckHolds(const SharingStrategy& strategy) const {
  if (!strategy.has_kv_types()) return absl::OkStatus();  // the default type: always held
  for (int l = 0; l < strategy.n_layers(); ++l) {
    if (!strategy.owns(l)) continue;
    const KvType t = strategy.kv_type(l, geometry_.type);
    if (pool_->Holds(t)) continue;
    std::vector<std::string> held;
    for (KvType h : kAllKvTypes) {
      if (pool_->Holds(h)) held.push_back(KvTypeName(h));
    }
    return absl::FailedPreconditionError(absl::StrFormat(
        "strategy %s stores layer %d's KV as %s; this KV pool holds only %s (the backend or "
        "the model's head_dim %d does not support %s)",
        strategy.id().substr(0, 16), l, KvTypeName(t), absl::StrJoin(held, ", "),
        geometry_.head_dim, KvTypeName(t)));
  }
  return absl::OkStatus();
}

const KvGeometry& KvCache::GeometryFor(SeqId seq, int layer) const {
  return GeometryOfType(seqs_.at(seq).type_of[layer], layer);
}

const KvGeometry& KvCache::GeometryOfType(KvType t, int layer) const {
  if (t == KvType::kInt4A && !int4a_layers_.empty()) return int4a_layers_[layer];
  return pool_->geometry(t);
}

void KvCache::SetQueryWeights(std::shared_ptr<const QueryWeights> weights) {
  query_weights_ = std::move(weights);
  int4a_layers_.clear();
  if (!pool_->Holds(KvType::kInt4A)) return;
  for (const std::vector<float>& w : query_weights_->layers) {
    KvGeometry g = pool_->geometry(KvType::kInt4A);
    g.k_weights = w.data();
    int4a_layers_.push_back(g);
  }
}

int64_t KvCache::BlocksFor(const SharingStrategy& strategy, int64_t tokens) const {
  return BlocksByType(strategy, tokens).total();
}

KvBlockCounts KvCache::BlocksByType(const SharingStrategy& strategy, int64_t tokens) const {
  const int64_t per_layer = (tokens + geometry_.block_tokens - 1) / geometry_.block_tokens;
  KvBlockCounts n;
  for (int l = 0; l < strategy.n_layers(); ++l) {
    if (strategy.owns(l)) n[strategy.kv_type(l, geometry_.type)] += per_layer;
  }
  return n;
}

KvBlockCounts KvCache::UsedByType() const {
  KvBlockCounts n;
  for (KvType t : kAllKvTypes) {
    n[t] = pool_->used_blocks(t);
  }
  return n;
}

SeqId KvCache::AddSequence(std::shared_ptr<const SharingStrategy> strategy) {
  const SeqId id = next_id_++;
  Sequence& s = seqs_[id];
  s.tables.resize(strategy->n_layers());
  s.type_of.resize(strategy->n_layers());
  for (int l = 0; l < strategy->n_layers(); ++l) {
    s.type_of[l] = strategy->kv_type(l, geometry_.type);
  }
  s.strategy = std::move(strategy);
  return id;
}

void KvCache::RemoveSequence(SeqId seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  Sequence& s = it->second;
  for (int l = 0; l < static_cast<int>(s.tables.size()); ++l) {
    for (int32_t b : s.tables[l]) pool_->Free(s.type_of[l], b);
  }
  if (s.tails != nullptr) tail_bytes_in_use_ -= s.tails->size();
  seqs_.erase(it);
}

KvBlockCounts KvCache::MissingByType(SeqId seq, int64_t tokens) const {
  const Sequence& s = seqs_.at(seq);
  const int64_t want = (tokens + geometry_.block_tokens - 1) / geometry_.block_tokens;
  KvBlockCounts missing;
  for (int l = 0; l < s.strategy->n_layers(); ++l) {
    if (s.strategy->owns(l)) {
      missing[s.type_of[l]] += std::max<int64_t>(0, want - int64_t(s.tables[l].size()));
    }
  }
  return missing;
}

int64_t KvCache::MissingBlocks(SeqId seq, int64_t tokens) const {
  return MissingByType(seq, tokens).total();
}

absl::Status KvCache::Reserve(SeqId seq, int64_t tokens) {
  Sequence& s = seqs_.at(seq);
  const int64_t want = (tokens + geometry_.block_tokens - 1) / geometry_.block_tokens;
  const KvBlockCounts missing = MissingByType(seq, tokens);
  if (!pool_->Fits(missing)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "KV pool: %d more blocks needed for %d tokens (%d owning layers), %d of %d free",
        missing.total(), tokens, s.strategy->owning_layers(), free_blocks(), total_blocks()));
  }
  const int64_t tail_bytes = s.strategy->KvTailBytes(geometry_);
  if (tail_bytes > 0 && s.tails == nullptr && tokens > 0) {
    auto tails = backend_.Allocate(static_cast<size_t>(tail_bytes));
    if (!tails.ok()) return tails.status();
    s.tails = std::move(*tails);
    tail_bytes_in_use_ += tail_bytes;
    s.tail_of.assign(s.strategy->n_layers(), nullptr);
    int64_t next = 0;
    for (int l = 0; l < s.strategy->n_layers(); ++l) {
      const int64_t bytes = pool_->geometry(s.type_of[l]).tail_bytes();
      if (s.strategy->owns(l) && bytes > 0) {
        s.tail_of[l] = static_cast<uint8_t*>(s.tails->data()) + next;
        next += bytes;
      }
    }
  }
  for (int l = 0; l < s.strategy->n_layers(); ++l) {
    if (!s.strategy->owns(l)) continue;
    while (int64_t(s.tables[l].size()) < want) s.tables[l].push_back(pool_->Allocate(s.type_of[l]));
  }
  return absl::OkStatus();
}

absl::Status KvCache::PrefixShareable(const SharingStrategy& a, const SharingStrategy& b,
                                      int64_t positions) const {
  if (positions < 1 || positions > geometry_.block_tokens) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KV prefix of %d positions: must be in [1, %d] (block 0)", positions,
                        geometry_.block_tokens));
  }
  if (a.n_layers() != b.n_layers()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KV prefix: strategies of %d and %d layers", a.n_layers(), b.n_layers()));
  }
  const auto& pa = a.projections();
  const auto& pb = b.projections();
  if ((pa == nullptr) != (pb == nullptr) || (pa != nullptr && pa->sha256() != pb->sha256())) {
    return absl::InvalidArgumentError(
        "KV prefix: the strategies carry different output projections");
  }
  auto f16_block_zero = [](KvType t) { return t == KvType::kF16 || KvTypeHasTail(t); };
  for (int l = 0; l < a.n_layers(); ++l) {
    if (a.source(l) != b.source(l) || a.drops(l) != b.drops(l)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("KV prefix: layer %d reads layer %d's cache in one strategy and %d's "
                          "in the other",
                          l, a.source(l), b.source(l)));
    }
    if (!a.owns(l)) continue;
    const KvType ta = a.kv_type(l, geometry_.type), tb = b.kv_type(l, geometry_.type);
    if (!f16_block_zero(ta) || !f16_block_zero(tb)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "KV prefix: layer %d is stored %s and %s; block 0 is f16 only in f16 and the types "
          "with a tail",
          l, KvTypeName(ta), KvTypeName(tb)));
    }
    if (!backend_.ReadsF16BlockZeroAlike(ta, tb)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "KV prefix: layer %d is stored %s and %s, which the %s backend's attention reads "
          "through different arithmetic",
          l, KvTypeName(ta), KvTypeName(tb), backend_.name()));
    }
  }
  return absl::OkStatus();
}

uint8_t* KvCache::F16BlockZero(const Sequence& s, int layer) {
  if (!s.tail_of.empty() && s.tail_of[layer] != nullptr) {
    return static_cast<uint8_t*>(s.tail_of[layer]);  // slot 0
  }
  const int64_t bytes = pool_->geometry(KvType::kF16).block_bytes();
  return static_cast<uint8_t*>(pool_->arena()) + int64_t(s.tables[layer][0]) * bytes;
}

absl::Status KvCache::CopyPrefix(SeqId from, SeqId to, int64_t positions) {
  const Sequence& src = seqs_.at(from);
  if (src.length < positions) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KV prefix of %d positions: the source sequence holds %d", positions, src.length));
  }
  if (seqs_.at(to).length != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KV prefix: the sequence it is copied into holds %d positions already",
                        seqs_.at(to).length));
  }
  absl::Status s = PrefixShareable(*src.strategy, *seqs_.at(to).strategy, positions);
  if (s.ok()) s = Reserve(to, positions);
  if (!s.ok()) return s;
  Sequence& dst = seqs_.at(to);
  // Block 0 in f16's layout: K f16[T][C], then V f16[T][C]; the first `positions` rows of each.
  const int64_t row_bytes = geometry_.kv_dim() * 2, v_offset = geometry_.block_tokens * row_bytes;
  for (int l = 0; l < dst.strategy->n_layers(); ++l) {
    if (!dst.strategy->owns(l)) continue;
    const uint8_t* a = F16BlockZero(src, l);
    uint8_t* b = F16BlockZero(dst, l);
    backend_.Copy(a, positions * row_bytes, b);
    backend_.Copy(a + v_offset, positions * row_bytes, b + v_offset);
  }
  dst.length = positions;
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
