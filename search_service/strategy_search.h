// A strategy search under any selection rule (selection_rules.h): the paper's exactly
// (RunKvSharerSearch) for `--method kvsharer --best-of 1`, else the same calibration forward
// and distances followed by BestOfKSearch over the rule's evaluator (CosineEvaluator for
// kvsharer, LossEvaluator for nll). The result carries the calibration cosine score of the
// final strategy, and the wall time at which each acceptance happened, so one run to the
// largest target also times every smaller one.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "kernels/backend.h"
#include "search_service/calibration.h"
#include "search_service/kvsharer_search.h"
#include "search_service/layer_distance.h"
#include "search_service/selection_rules.h"

namespace kvshare {

struct StrategySearchResult {
  LayerDistances distances;
  SelectionResult selection;
  // The final strategy; provenance: method, order, threshold (kvsharer's cosine threshold;
  // 0 for nll), best_of, max_nll_increase, calibration_hash, target_layers, score (the rule's
  // metric of the final strategy), calibration_score, and a note (samples, tokens, seed, stop,
  // counts).
  std::shared_ptr<const SharingStrategy> strategy;
  double calibration_score = 1.0;  // mean cosine to the unshared model on the calibration set
  double calibration_seconds = 0;  // unshared forward, K/V averaging, distances
  double greedy_seconds = 0;
  double total_seconds = 0;
  // Seconds from the start of the search to the k-th acceptance (index k-1): wall time, and
  // the process's CPU time (all threads; on a machine shared with other work, CPU time / the
  // backend's threads estimates the wall time it would take alone).
  std::vector<double> accept_seconds;
  std::vector<double> accept_cpu_seconds;
  double total_cpu_seconds = 0;
};

// Errors: ValidateSelectionOptions, a calibration set that does not fit the model, backend
// failures, Cancelled (hooks.cancel).
absl::StatusOr<StrategySearchResult> RunStrategySearch(const Model& model, Backend& backend,
                                                       const CalibrationSet& calibration,
                                                       const SelectionOptions& options,
                                                       const SearchHooks& hooks = {});

// Mean cosine of the final-norm states of `kv_source` to the unshared model's on the
// calibration set (the paper's score, for strategies no search scored, e.g. baselines).
absl::StatusOr<double> CalibrationCosine(const Model& model, Backend& backend,
                                         const CalibrationSet& calibration,
                                         const std::vector<int>& kv_source);

}  // namespace kvshare
