// Stopping a quality check early once a candidate is over its budget beyond doubt (the KV plan
// search's time, issue 17, docs/METHOD.md §6).
//
// A check averages a per-unit NLL increase over the N units of its text, read in order —
// 512-token windows of the held-out slice (heldout_quality.h), calibration samples
// (loss_evaluator.h) — and the search compares that whole-text mean with the budget. After each
// step from the min_units-th unit on (n read), the increases so far are treated as paired
// samples of the candidate's cost, and the N - n unread units as more draws like them: the
// whole-text mean is then predicted as their mean m, with standard error
//   sd * sqrt((N - n) / (N n))
// (the unread units' own spread, sd^2 (N - n), plus their mean's, (N - n)^2 sd^2 / n, over N^2:
// a finite-population correction of sd / sqrt(n) that shrinks to 0 as the text runs out). The
// check stops when m less z of those exceeds the budget. A candidate near the budget is read to
// the end, so a verdict can only differ from the whole check's when the unread units move the
// mean by more than z of those errors. Figures recorded for a result never come from a stopped
// check: only a candidate that is rejected stops early.
#pragma once

#include "absl/types/span.h"

namespace kvshare {

struct EarlyReject {
  double above_nats = 0;  // the budget, nats/token
  int min_units = 8;
  double z = 3.0;
};

// Whether `increases` (one per unit read so far, nats/token) of a check of `total_units` units
// (>= increases.size()) put its whole-text mean over rule.above_nats by the rule above.
bool OverBudgetBeyondDoubt(absl::Span<const double> increases, size_t total_units,
                           const EarlyReject& rule);

}  // namespace kvshare
