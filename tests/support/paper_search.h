// The paper's search spelled out as the reference RunStrategySearch is checked against: the
// unshared forward over the calibration set (K/V averaged per layer), the layer distances, then
// GreedySearch (docs/METHOD.md §3 in eight lines) over a CosineEvaluator. RunStrategySearch with
// `--method kvsharer --best-of 1` must give exactly this strategy and trace.
#pragma once

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "kernels/backend.h"
#include "search_service/calibration.h"
#include "search_service/greedy_search.h"
#include "search_service/layer_distance.h"

namespace kvshare::testing {

struct PaperSearchResult {
  LayerDistances distances;
  GreedyResult greedy;
};

// Expects two searches to have made the same choices: strategy, stop reason, counts, final
// score, and every trial of the trace (pair, distance, score, candidate, accepted), compared
// exactly (no tolerance: the same candidates scored by the same evaluator give the same bits).
void ExpectSameSearch(const GreedyResult& want, const GreedyResult& got);

absl::StatusOr<PaperSearchResult> PaperSearch(const Model& model, Backend& backend,
                                              const CalibrationSet& calibration,
                                              const GreedyOptions& options);

}  // namespace kvshare::testing
