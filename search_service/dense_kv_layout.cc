#include "search_service/dense_kv_layout.h"

#include <utility>

#include "absl/strings/str_format.h"

namespace kvshare {

absl::StatusOr<std::unique_ptr<DenseKvLayout>> DenseKvLayout::Create(Backend& backend,
                                                                     const ModelConfig& config,
                                                                     int samples, int tokens,
                                                                     bool kept_bank) {
  if (samples < 1 || tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("dense kv layout: samples %d and tokens %d must be >= 1", samples, tokens));
  }
  std::unique_ptr<DenseKvLayout> d(new DenseKvLayout());
  d->geometry_.block_tokens = tokens;
  d->geometry_.n_kv_heads = config.n_kv_heads;
  d->geometry_.head_dim = config.head_dim;
  d->samples_ = samples;
  d->n_layers_ = config.n_layers;
  d->banks_ = kept_bank ? 3 : 2;
  const size_t n_blocks = size_t(d->banks_) * samples * config.n_layers;
  auto pool = backend.Allocate(n_blocks * d->geometry_.block_floats() * sizeof(float));
  if (!pool.ok()) return pool.status();
  d->pool_ = std::move(*pool);
  d->blocks_.resize(n_blocks);
  for (size_t b = 0; b < n_blocks; ++b) d->blocks_[b] = static_cast<int32_t>(b);
  d->kv_source_.resize(config.n_layers);
  for (int l = 0; l < config.n_layers; ++l) d->kv_source_[l] = l;
  return d;
}

void DenseKvLayout::SetCandidate(const std::vector<int>& kv_source, int first_changed) {
  kv_source_ = kv_source;
  first_changed_ = first_changed;
}

void DenseKvLayout::AcceptCandidate() {
  for (int s = 0; s < samples_; ++s) {
    for (int l = first_changed_; l < n_layers_; ++l) {
      std::swap(BlockOf(kAccepted, s, l), BlockOf(kCandidate, s, l));
    }
  }
}

void DenseKvLayout::SwapCandidateAndKept(int from_layer) {
  for (int s = 0; s < samples_; ++s) {
    for (int l = from_layer; l < n_layers_; ++l) {
      std::swap(BlockOf(kCandidate, s, l), BlockOf(kKept, s, l));
    }
  }
}

bool DenseKvLayout::Owns(int /*input*/, int layer) const { return kv_source_[layer] == layer; }

absl::Span<const int32_t> DenseKvLayout::Table(int input, int layer) const {
  const int source = kv_source_[layer];
  const Bank bank = source < first_changed_ ? kAccepted : kCandidate;
  return absl::Span<const int32_t>(&BlockOf(bank, first_input_ + input, source), 1);
}

}  // namespace kvshare
