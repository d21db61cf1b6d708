// Pairwise layer distances of the KVSharer method (docs/METHOD.md §3), on the calibration K/V
// averaged over samples (AveragedKv). For a pair (i, j), i > j:
//   dK = mean over tokens t and KV heads h of || avgK_i[t][h][:] - avgK_j[t][h][:] ||_2
//   dV = the same on V
//   distance = (dK + dV) / 2
// (the reference code's norm(a - b, dim=-1).mean()). Computed in double.
#pragma once

#include <vector>

#include "common/model/model.h"
#include "search_service/calibration.h"

namespace kvshare {

// Lower triangle of an L x L matrix: entries exist for i > j only. A value type.
class LayerDistances {
 public:
  explicit LayerDistances(int n_layers = 0);

  int n_layers() const { return n_layers_; }
  // Requires 0 <= j < i < n_layers.
  double distance(int i, int j) const { return (dk(i, j) + dv(i, j)) / 2; }
  double dk(int i, int j) const { return dk_[Index(i, j)]; }
  double dv(int i, int j) const { return dv_[Index(i, j)]; }
  void Set(int i, int j, double dk, double dv);
  // Whether layer i may read layer j's cache (ModelConfig::CanReadCacheOf); all pairs are
  // allowed until Forbid. OrderPairs leaves forbidden pairs out, so no search proposes them.
  bool allowed(int i, int j) const { return forbidden_.empty() || !forbidden_[Index(i, j)]; }
  void Forbid(int i, int j);

 private:
  size_t Index(int i, int j) const { return size_t(i) * n_layers_ + j; }
  int n_layers_ = 0;
  std::vector<double> dk_, dv_;  // [L][L], used below the diagonal
  std::vector<bool> forbidden_;  // [L][L] once a pair is forbidden; empty: none
};

LayerDistances ComputeLayerDistances(const AveragedKv& kv);

// Forbids every pair (i, j) whose layer i may not read j's cache under the model's rule
// (ModelConfig::CanReadCacheOf: Gemma 3's local/global kinds), so no search proposes it.
void ForbidUnreadablePairs(const ModelConfig& config, LayerDistances* distances);

}  // namespace kvshare
