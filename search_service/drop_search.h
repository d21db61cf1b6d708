// Dropping attention, calibrated (issue 18, docs/METHOD.md §7): the k layers that stop
// attending altogether — no KV cache, no attention compute — each, by default, with a linear
// substitute for what its attention added (common/strategy/output_projections.h).
//
//   1. Rank (RankAttentionDrops): for every layer l >= 1, the scoring-set NLL of the model with
//      l alone dropped, bare (rank_with_substitutes: with its substitute fitted on the fit set at
//      the middle ridge of `ridges`, all of them from one unshared pass: FitEachSubstitute).
//   2. Fit (FitAttentionDrops): drop the k cheapest; fit their substitutes together (in layer
//      order, each on the residual stream the earlier drops leave) at every ridge of `ridges`
//      and keep the one with the lowest scoring-set NLL.
// Cost: n_layers - 1 scorings (and one fit pass when ranking with substitutes), then |ridges|
// fits of the k.
//
// The fit and scoring sets are the ProjectionCalibrator's (DropSetOptions below; disjoint from
// the search's calibration windows and from the held-out slice).
//
// Measured (held-out WikiText-2, docs/METHOD.md §7): on SmolLM2-135M, bare ranking and
// substitutes for the k chosen give +0.086 / +0.263 / +0.551 nats at 4 / 8 / 12 of 30 (bare
// drops +0.227 / +0.472 / +0.878); ranking with substitutes +0.069 / +0.395 / +0.729. On Gemma 3
// ranking with substitutes wins at 3, 5 and 7 of 18. Bare ranking is the default. A drop with
// its substitute costs about half of a bare one: heads that attend to the current token or to
// a sink are close to linear in the normed input.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "search_service/projection_fit.h"
#include "search_service/projection_sets.h"
#include "search_service/strategy_search.h"

namespace kvshare {

// The fit and scoring sets of a drop search: contiguous windows of min(512, max_seq_len)
// tokens, about 4,608 and 2,048 tokens in all. Measured on SmolLM2 at 4 of 30: fitted and
// scored on 128-token lines the substitutes looked better than the unshared model on the
// scoring set (-0.008 nats) and gave +0.104 on 512-token held-out windows; on 512-token
// windows, +0.003 and +0.086 (attention far back is what a substitute must stand in for).
ProjectionSetOptions DropSetOptions(int max_seq_len);

struct DropSearchOptions {
  int target_layers = 0;  // k, in [1, n_layers - 1]
  bool substitutes = true;
  bool rank_with_substitutes = false;  // step 1 scores each drop with its substitute
  std::vector<double> ridges = DefaultRidges();
  DType type = DType::kF16;  // the substitutes' stored type
};

struct DropSearchHooks {
  std::function<void(int done, int total)> progress;  // after each ranked layer
  const std::atomic<bool>* cancel = nullptr;          // read before each ranked layer
};

// (scoring-set NLL increase over the unshared model, layer), ascending (ties: the earlier).
using DropRanking = std::vector<std::pair<double, int>>;

// Step 1. InvalidArgument for options out of range (naming the field and the limit).
absl::StatusOr<DropRanking> RankAttentionDrops(const Model& model, ProjectionCalibrator& calibrator,
                                               const DropSearchOptions& options,
                                               const DropSearchHooks& hooks = {});

struct DropSearchResult {
  // Drops (and substitutes); provenance: method "drop", target_layers, score (the scoring-set
  // NLL increase), a note naming the ridge and the sets.
  std::shared_ptr<const SharingStrategy> strategy;
  DropRanking ranking;
  double ridge = 0;                              // 0: no substitutes kept
  double score_increase = 0;                     // scoring-set NLL increase of `strategy`
  double bare_increase = 0;                      // the same drops without substitutes
  std::vector<std::pair<double, double>> tried;  // (ridge, scoring-set NLL increase)
};

// Step 2 on a ranking (of at least target_layers entries).
absl::StatusOr<DropSearchResult> FitAttentionDrops(const Model& model,
                                                   ProjectionCalibrator& calibrator,
                                                   const DropRanking& ranking,
                                                   const DropSearchOptions& options);

// Both steps.
absl::StatusOr<DropSearchResult> SearchAttentionDrops(const Model& model,
                                                      ProjectionCalibrator& calibrator,
                                                      const DropSearchOptions& options,
                                                      const DropSearchHooks& hooks = {});

// Both steps on `sets` with the default ridges and f16 substitutes, as a StrategySearchResult
// (the search service's jobs): phases and cancellation through `hooks`, the selection's
// kv_source the identity, its score minus the scoring-set NLL increase.
absl::StatusOr<StrategySearchResult> RunDropAsSearch(const Model& model, const ProjectionSets& sets,
                                                     int threads, int target_layers,
                                                     bool substitutes, const SearchHooks& hooks);

}  // namespace kvshare
