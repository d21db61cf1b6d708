// The quality gate on rollouts (issue 17; docs/ARCHITECTURE.md, The control plane): a version
// rolls out only while its recorded held-out perplexity increase over the unshared model
// (StrategyProvenance heldout_ppl / baseline_ppl, measured by the search) is within its model's
// budget (the catalog's max_ppl_increase_pct, model_catalog.h), unless the request allows the
// regression, which the rollout records.
//
// A version with no recorded quality (published by hand, or by a search told not to measure)
// is refused like one past the budget: the gate cannot tell it is within it. Version 0 is the
// unshared model and never reaches the gate (a rollout's target is >= 1).
//
// Pure functions (SetRunningQuality reads the store).
#pragma once

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "kvshare/v1/registry.pb.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

// (heldout_ppl / baseline_ppl - 1) * 100: the held-out perplexity increase in percent.
double PplIncreasePct(const StrategyProvenance& p);

// What the gate decided for one CreateRollout, recorded in the rollout (RecordGate).
struct QualityGateRecord {
  bool allow_quality_regression = false;
  double budget_pct = 0;
  std::optional<v1::StrategyQuality> quality;  // the target's, when recorded
  std::optional<v1::QualityProbe> probe;       // the registry's probe of the target
};

// OK when `record`'s quality is within `budget_pct`, or `allow` is set. Otherwise
// FailedPrecondition naming the model, the version, its increase (and the perplexities it
// comes from) and the budget — or saying that no quality is recorded — and the override.
absl::Status CheckQualityGate(const StrategyRecord& record, const std::string& model_name,
                              double budget_pct, bool allow);

// The gate's inputs for `record` (without the probe, which the caller measures).
QualityGateRecord GateRecordFor(const StrategyRecord& record, double budget_pct, bool allow);

// The fleet view's quality of what a worker runs (has_quality, ppl_increase_pct): version 0 is
// the unshared model (0%); another version, its recorded increase when its content is
// `strategy_id`; nothing when none is recorded or the worker runs other content.
void SetRunningQuality(const StrategyStore& store, const std::string& fingerprint, uint64_t version,
                       const std::string& strategy_id, v1::WorkerStatus* out);

// Writes `gate` into the rollout's fields (target_quality, quality_budget_pct,
// allow_quality_regression, target_probe).
void RecordGate(const QualityGateRecord& gate, v1::Rollout* rollout);

}  // namespace kvshare
