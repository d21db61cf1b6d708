// The whole KVSharer search for one model (DESIGN.md §1): one unshared forward over the
// calibration set (K/V averaged per layer, hidden states kept for the evaluator), the layer
// distance matrix, then the greedy selection scored by CosineEvaluator.
//
// Deterministic: the strategy and the trace depend on the model, the calibration set and the
// options only (the CPU kernels give the same numbers at any thread count). Timings are
// reported beside them and are not part of either.
#pragma once

#include <atomic>
#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "kernels/backend.h"
#include "search_service/calibration.h"
#include "search_service/greedy_search.h"
#include "search_service/layer_distance.h"

namespace kvshare {

struct KvSharerSearchResult {
  LayerDistances distances;
  GreedyResult greedy;
  // The final strategy, provenance filled in: method "kvsharer", order, threshold,
  // calibration_hash, target_layers, score, and a note (samples, tokens, seed, stop reason).
  std::shared_ptr<const SharingStrategy> strategy;
  double calibration_seconds = 0;  // unshared forward, K/V averaging, distances
  double greedy_seconds = 0;
  double total_seconds = 0;
};

// Rows per forward pass the search asks of its Transformer: all samples at once up to 2048
// rows (fewer, bigger GEMMs), and never less than one sample.
int SearchMaxRows(const CalibrationSet& calibration);

enum class SearchPhase {
  kCalibration,  // the unshared forward, K/V averaging, distances
  kGreedy,       // scoring candidates
};
const char* SearchPhaseName(SearchPhase phase);

// What a caller may watch and stop while the search runs. Every hook is optional and is
// called on the searching thread.
struct SearchHooks {
  std::function<void(SearchPhase)> on_phase;  // at the start of each phase
  GreedyProgressFn progress;                  // before each pair is scored
  // Read before every forward pass over the calibration set (the unshared one and each
  // candidate's): once true the search stops there, so within one candidate evaluation, and
  // returns Cancelled.
  const std::atomic<bool>* cancel = nullptr;
};

// Runs the search with its own Transformer over `backend`. Errors: invalid options
// (ValidateGreedyOptions), a calibration set that does not fit the model, backend failures,
// Cancelled (hooks.cancel).
absl::StatusOr<KvSharerSearchResult> RunKvSharerSearch(const Model& model, Backend& backend,
                                                       const CalibrationSet& calibration,
                                                       const GreedyOptions& options,
                                                       const SearchHooks& hooks);
absl::StatusOr<KvSharerSearchResult> RunKvSharerSearch(const Model& model, Backend& backend,
                                                       const CalibrationSet& calibration,
                                                       const GreedyOptions& options,
                                                       const GreedyProgressFn& progress = nullptr);

}  // namespace kvshare
