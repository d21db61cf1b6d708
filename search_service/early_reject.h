// Stopping a quality check early once a candidate is over its budget beyond doubt (the KV plan
// search's time, issue 17, docs/METHOD.md §6).
//
// A check averages a per-unit NLL increase over units read in order — 512-token windows of the
// held-out slice (heldout_quality.h), calibration samples (loss_evaluator.h). After each step
// from the min_units-th unit on, the increases so far are treated as paired samples of the
// candidate's cost: the check stops when their mean less z standard errors (sd / sqrt(units))
// exceeds the budget. A candidate near the budget is read to the end, so a verdict can only
// differ from the whole check's when the unread units move the mean by more than z standard
// errors of the unit-to-unit spread. Figures recorded for a result never come from a stopped
// check: only a candidate that is rejected stops early.
#pragma once

#include "absl/types/span.h"

namespace kvshare {

struct EarlyReject {
  double above_nats = 0;  // the budget, nats/token
  int min_units = 8;
  double z = 3.0;
};

// Whether `increases` (one per unit read so far, nats/token) put the candidate over
// rule.above_nats by the rule above.
bool OverBudgetBeyondDoubt(absl::Span<const double> increases, const EarlyReject& rule);

}  // namespace kvshare
