// The KV plan search (kv_plan_search.h) on a real model: its calibration scoring through
// LossEvaluator's incremental forward with each lowered layer's K/V round-tripped through its
// KV type (IncrementalForward::RunPlan), and the pair distances for the sharing step from the
// same unshared forward (KvAverager), like RunStrategySearch.
#pragma once

#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "kernels/backend.h"
#include "search_service/calibration.h"
#include "search_service/kv_plan_search.h"

namespace kvshare {

struct KvPlanRun {
  KvPlanSearchResult search;
  double calibration_seconds = 0;  // the unshared forward and the distances
  double total_seconds = 0;        // wall, held-out checks included
  double total_cpu_seconds = 0;    // the process's CPU time over the same span
};

// `block_tokens`: the serving pool's block size, the unit the types are simulated in.
// `heldout`: the held-out measure step 5 trims on (e.g. a QualityMeter over the strategy the
// plan makes). Errors: SearchKvPlan's, calibration sets that do not fit the model.
absl::StatusOr<KvPlanRun> RunKvPlanSearch(const Model& model, Backend& backend,
                                          const CalibrationSet& calibration, int block_tokens,
                                          const KvPlanOptions& options,
                                          const HeldoutIncreaseFn& heldout,
                                          const KvPlanHooks& hooks = {});

}  // namespace kvshare
