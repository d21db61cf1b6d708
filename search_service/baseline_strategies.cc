#include "search_service/baseline_strategies.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace kvshare {
namespace {

absl::Status TooMany(BaselinePattern pattern, int n_layers, int shared, int limit,
                     const std::string& why) {
  return absl::InvalidArgumentError(
      absl::StrFormat("--baseline %s cannot share %d of %d layers: at most %d (%s)",
                      BaselinePatternName(pattern), shared, n_layers, limit, why));
}

}  // namespace

const char* BaselinePatternName(BaselinePattern pattern) {
  switch (pattern) {
    case BaselinePattern::kAlternate:
      return "alternate";
    case BaselinePattern::kGroups:
      return "groups";
    case BaselinePattern::kMiddle:
      return "middle";
    case BaselinePattern::kMiniCache:
      return "minicache";
  }
  return "?";
}

const std::vector<BaselinePattern>& AllBaselinePatterns() {
  static const std::vector<BaselinePattern> all = {
      BaselinePattern::kAlternate, BaselinePattern::kGroups, BaselinePattern::kMiddle,
      BaselinePattern::kMiniCache};
  return all;
}

absl::StatusOr<BaselinePattern> ParseBaselinePattern(const std::string& name) {
  for (BaselinePattern p : AllBaselinePatterns()) {
    if (name == BaselinePatternName(p)) return p;
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("--baseline '%s' is not one of alternate, groups, middle, minicache", name));
}

absl::StatusOr<std::vector<int>> BaselineStrategy(BaselinePattern pattern, int n_layers, int shared,
                                                  const BaselineOptions& options) {
  const int L = n_layers;
  if (L < 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the model has %d layer(s); sharing needs at least 2", L));
  }
  if (shared < 1 || shared > L - 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--shared %d must be in [1, %d] (layer 0 always owns; the model has %d layers)", shared,
        L - 1, L));
  }
  std::vector<int> kv_source(L);
  for (int l = 0; l < L; ++l) kv_source[l] = l;
  switch (pattern) {
    case BaselinePattern::kAlternate: {
      const int m = L / 2;  // odd layers 1, 3, ..., 2m-1
      if (shared > m) return TooMany(pattern, L, shared, m, "one per odd layer");
      for (int t = 0; t < shared; ++t) {
        // m / shared >= 1, so consecutive t give distinct indices.
        const int index = int((int64_t(2 * t + 1) * m) / (2 * shared));
        const int layer = 2 * index + 1;
        kv_source[layer] = layer - 1;
      }
      break;
    }
    case BaselinePattern::kGroups: {
      const int g = options.group_size;
      if (g < 2) {
        return absl::InvalidArgumentError(
            absl::StrFormat("--group-size %d must be >= 2 (a group shares its lowest layer)", g));
      }
      // Groups from the top: [L-g, L-1], [L-2g, L-g-1], ...; the lowest group must start at
      // layer >= 0, and a partial group needs its lowest layer.
      int left = shared;
      int top = L - 1;  // the highest layer of the current group
      int limit = 0;
      for (int t = L - 1; t >= 1; t -= g) limit += std::min(g - 1, t);  // t: a group's top
      if (shared > limit) return TooMany(pattern, L, shared, limit, "groups need a lowest owner");
      while (left > 0) {
        const int lowest = std::max(0, top - g + 1);
        const int take = std::min(left, top - lowest);  // layers above `lowest` in the group
        for (int l = lowest + 1; l <= lowest + take; ++l) kv_source[l] = lowest;
        left -= take;
        top = lowest - 1;
      }
      break;
    }
    case BaselinePattern::kMiddle: {
      const int middle = L - shared - 1;  // >= 0 since shared <= L - 1
      for (int l = middle + 1; l < L; ++l) kv_source[l] = middle;
      break;
    }
    case BaselinePattern::kMiniCache: {
      const int limit = (L - 1) / 2;
      if (shared > limit) return TooMany(pattern, L, shared, limit, "pairs above layer 0");
      for (int l = L - 2 * shared; l < L; l += 2) kv_source[l + 1] = l;
      break;
    }
  }
  return kv_source;
}

}  // namespace kvshare
