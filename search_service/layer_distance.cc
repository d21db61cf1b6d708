#include "search_service/layer_distance.h"

#include <cmath>

namespace kvshare {
namespace {

// Mean over [tokens][n_kv_heads] of the Euclidean norm over head_dim of a - b.
double MeanHeadNorm(const std::vector<double>& a, const std::vector<double>& b, int rows,
                    int head_dim) {
  double total = 0;
  for (int r = 0; r < rows; ++r) {
    const double* x = a.data() + size_t(r) * head_dim;
    const double* y = b.data() + size_t(r) * head_dim;
    double ss = 0;
    for (int d = 0; d < head_dim; ++d) {
      const double diff = x[d] - y[d];
      ss += diff * diff;
    }
    total += std::sqrt(ss);
  }
  return rows > 0 ? total / rows : 0.0;
}

}  // namespace

LayerDistances::LayerDistances(int n_layers)
    : n_layers_(n_layers),
      dk_(size_t(n_layers) * n_layers, 0.0),
      dv_(size_t(n_layers) * n_layers, 0.0) {}

void LayerDistances::Set(int i, int j, double dk, double dv) {
  dk_[Index(i, j)] = dk;
  dv_[Index(i, j)] = dv;
}

void LayerDistances::Forbid(int i, int j) {
  if (forbidden_.empty()) forbidden_.assign(size_t(n_layers_) * n_layers_, false);
  forbidden_[Index(i, j)] = true;
}

LayerDistances ComputeLayerDistances(const AveragedKv& kv) {
  LayerDistances d(kv.n_layers);
  const int rows = kv.tokens * kv.n_kv_heads;
  for (int i = 1; i < kv.n_layers; ++i) {
    for (int j = 0; j < i; ++j) {
      d.Set(i, j, MeanHeadNorm(kv.k[i], kv.k[j], rows, kv.head_dim),
            MeanHeadNorm(kv.v[i], kv.v[j], rows, kv.head_dim));
    }
  }
  return d;
}

void ForbidUnreadablePairs(const ModelConfig& config, LayerDistances* distances) {
  for (int i = 1; i < config.n_layers; ++i) {
    for (int j = 0; j < i; ++j) {
      if (!config.CanReadCacheOf(i, j)) distances->Forbid(i, j);
    }
  }
}

}  // namespace kvshare
