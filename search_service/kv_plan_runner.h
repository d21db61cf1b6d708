// The KV plan search (kv_plan_search.h) on a real model: its calibration scoring through
// LossEvaluator's incremental forward with each lowered layer's K/V round-tripped through its
// KV type (IncrementalForward::RunPlan), and the pair distances for the sharing step from the
// same unshared forward (KvAverager), like RunStrategySearch.
#pragma once

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "search_service/calibration.h"
#include "search_service/heldout_quality.h"
#include "search_service/kv_plan_search.h"
#include "search_service/strategy_search.h"

namespace kvshare {

struct KvPlanRun {
  KvPlanSearchResult search;
  double calibration_seconds = 0;  // the unshared forward and the distances
  double total_seconds = 0;        // wall, held-out checks included
  double total_cpu_seconds = 0;    // the process's CPU time over the same span
  // Mean cosine of the final plan's final-norm states to the unshared model's on the
  // calibration set (the paper's score, recorded in every strategy's provenance).
  double calibration_cosine = 1.0;
};

// The CPU backend the plan search's calibration forwards run on:
// CalibrationBackendOptions(threads, options.activations).
CpuBackendOptions KvPlanBackendOptions(int threads, const KvPlanOptions& options);

// `block_tokens`: the serving pool's block size, the unit the types are simulated in.
// `heldout`: the held-out measure step 5 trims on (e.g. a QualityMeter over the strategy the
// plan makes). Errors: SearchKvPlan's, calibration sets that do not fit the model, samples
// too short for int4 at this block size (CheckPlanCalibration).
absl::StatusOr<KvPlanRun> RunKvPlanSearch(const Model& model, Backend& backend,
                                          const CalibrationSet& calibration, int block_tokens,
                                          const KvPlanOptions& options,
                                          const HeldoutIncreaseFn& heldout,
                                          const KvPlanHooks& hooks = {});

// The strategy a plan makes: kv_source with the plan's per-layer KV types.
absl::StatusOr<SharingStrategy> KvPlanStrategy(const Model& model, const KvPlan& plan);

struct KvPlanStrategyResult {
  KvPlanRun run;
  // The plan as a strategy; provenance: method "kvplan", order, best_of, calibration_hash,
  // target_layers (its sharing layers), score (minus the calibration NLL increase), a note
  // (budget, types, runs, checks, actions), and the held-out quality of its last check.
  std::shared_ptr<const SharingStrategy> strategy;
  double baseline_seconds = 0;  // the unshared model's held-out perplexity (the reference)
};

// RunKvPlanSearch trimming on `heldout` through a QualityMeter (the unshared fp32 model's
// perplexity first, then each checked plan's), everything a search service job and `kvshare
// search --max-ppl-increase` record. Every forward (calibration and held-out) runs on a CPU
// backend of `threads` threads with options.activations. `on_heldout` (optional) sees each check's
// NLL increase and the held-out tokens it read (fewer than the slice's when a floor check stopped
// early). `baselines` (optional): where the unshared pass is looked up and kept
// (heldout_baseline_cache.h; the search service's jobs share one).
using HeldoutCheckFn = std::function<void(double increase, int64_t tokens_read)>;
absl::StatusOr<KvPlanStrategyResult> RunKvPlanStrategySearch(
    const Model& model, const CalibrationSet& calibration, const HeldoutSlice& heldout, int threads,
    const KvPlanOptions& options, const KvPlanHooks& hooks = {},
    const HeldoutCheckFn& on_heldout = nullptr, HeldoutBaselineCache* baselines = nullptr);

// The same as a StrategySearchResult (what search jobs report and publish): the strategy, the
// final plan as the "greedy" kv_source with its sharing layers as acceptances and minus the
// calibration NLL increase as the score, and the times. SearchHooks map onto the plan's:
// cancel as is, on_phase(kCalibration) at the start and on_phase(kGreedy) when the
// search reports its first step (the floor check or the sensitivity scan).
absl::StatusOr<StrategySearchResult> RunKvPlanAsSearch(const Model& model,
                                                       const CalibrationSet& calibration,
                                                       const HeldoutSlice& heldout, int threads,
                                                       const KvPlanOptions& options,
                                                       const SearchHooks& hooks,
                                                       HeldoutBaselineCache* baselines = nullptr);

}  // namespace kvshare
