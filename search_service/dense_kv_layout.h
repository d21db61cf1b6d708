// KV storage for the strategy search: the calibration samples' K/V in one backend buffer, one
// block of exactly `tokens` positions per (sample, layer), in two banks — the accepted
// strategy's and the candidate's — and optionally a third, where a candidate already run is
// kept aside while others run (IncrementalForward::KeepLastRun).
//
// A candidate differs from the accepted strategy from `first_changed` on, and only layers
// >= first_changed run for it. Their K/V reads follow docs/METHOD.md §3's cost rule: a layer whose
// source is below first_changed reads that source's accepted block (computed by an earlier,
// identical prefix); every other read, and every write, uses the candidate bank. Accepting
// swaps the two banks' blocks of layers >= first_changed, so nothing is copied.
//
// Inputs of a forward pass are samples first_input() .. first_input() + n - 1 (the search runs
// the samples in batches). Not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/engine/transformer.h"
#include "common/model/model.h"
#include "kernels/backend.h"

namespace kvshare {

class DenseKvLayout : public KvLayout {
 public:
  // `kept_bank`: allocate the third bank (half as much memory again).
  static absl::StatusOr<std::unique_ptr<DenseKvLayout>> Create(Backend& backend,
                                                               const ModelConfig& config,
                                                               int samples, int tokens,
                                                               bool kept_bank = false);

  // The strategy the next forward runs (layers >= first_changed of it).
  void SetCandidate(const std::vector<int>& kv_source, int first_changed);
  // The candidate's K/V of layers >= first_changed become the accepted ones.
  void AcceptCandidate();
  // Exchanges the candidate bank's blocks of layers >= from_layer with the kept bank's (nothing
  // is copied). Needs the kept bank.
  void SwapCandidateAndKept(int from_layer);
  bool has_kept_bank() const { return banks_ == 3; }
  void set_first_input(int sample) { first_input_ = sample; }

  const KvGeometry& geometry() const override { return geometry_; }
  float* pool() override { return pool_->f32(); }
  bool Owns(int input, int layer) const override;
  absl::Span<const int32_t> Table(int input, int layer) const override;

 private:
  DenseKvLayout() = default;
  enum Bank { kAccepted = 0, kCandidate = 1, kKept = 2 };
  int32_t& BlockOf(Bank bank, int sample, int layer) {
    return blocks_[(size_t(bank) * samples_ + sample) * n_layers_ + layer];
  }
  const int32_t& BlockOf(Bank bank, int sample, int layer) const {
    return blocks_[(size_t(bank) * samples_ + sample) * n_layers_ + layer];
  }

  KvGeometry geometry_;
  int samples_ = 0, n_layers_ = 0, banks_ = 2;
  std::unique_ptr<Buffer> pool_;
  std::vector<int32_t> blocks_;  // [bank][sample][layer] -> block index in the pool
  std::vector<int> kv_source_;
  int first_changed_ = 0;
  int first_input_ = 0;
};

}  // namespace kvshare
