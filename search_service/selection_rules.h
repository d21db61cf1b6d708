// Selection rules beside the paper's (issue 12). A rule is: a candidate metric (what the
// Evaluator returns; higher is better), an acceptance threshold on it, and how many candidates
// of the pair order are scored per step.
//
//   --method kvsharer   the paper's: metric = mean cosine of final-norm states, accept when
//                       > --threshold (0.5). With --best-of 1 (the default) it is exactly
//                       docs/METHOD.md §3 (GreedySearch).
//   --method nll        metric = -(calibration NLL increase over the unshared model, in
//                       nats/token); accept when the increase is < --max-nll-increase R
//                       (no cap when R is not given).
//   --best-of K         at each step, score the next K candidates of the order (skipping pairs
//                       whose i already shares) against the accepted strategy, drop those at or
//                       below the threshold (as the paper drops a rejected pair), and accept the
//                       best one (ties: the earliest in the order). The others stay pending, to
//                       be scored again against the new strategy at the next step. K = 1 is the
//                       paper's first-acceptable rule (GreedySearch) exactly.
// Every rule takes every pair order (dissimilar / similar / random).
//
// Deterministic like GreedySearch: the strategy and trace depend on the distances, the options
// and the scores only. A run to target k passes through the results for every smaller target
// (StrategyAfterAccepts applies), since each step depends only on the steps before it.
#pragma once

#include <atomic>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/matmul.h"
#include "search_service/greedy_search.h"
#include "search_service/layer_distance.h"

namespace kvshare {

enum class SearchMethod {
  kKvSharer,  // cosine of final-norm states > threshold (the paper)
  kNll,       // calibration NLL increase < max_nll_increase
};
const char* SearchMethodName(SearchMethod method);
// "kvsharer", "nll"; InvalidArgument naming the value otherwise.
absl::StatusOr<SearchMethod> ParseSearchMethod(const std::string& name);

struct SelectionOptions {
  SearchMethod method = SearchMethod::kKvSharer;
  // order, seed, target_layers; threshold is the cosine threshold of kKvSharer (kNll sets the
  // threshold GreedySearch compares with from max_nll_increase: see GreedyOptionsFor).
  GreedyOptions greedy;
  int best_of = 1;                         // K >= 1
  bool lazy = false;                       // BestOfK::lazy
  std::optional<double> max_nll_increase;  // kNll only; R > 0, nats/token
  // kNll only (issue 18): score each candidate with its calibrated output projections on the
  // projection scoring set (calibrated_evaluator.h) instead of the plain calibration NLL;
  // RunStrategySearch then needs a ProjectionCalibrator. calibration_ridge > 0: the fixed
  // ridge strength of those fits (relative, ridge_fit.h).
  bool calibrated = false;
  double calibration_ridge = 0.03;
  // How the calibration forwards take activations in quantized matmuls (kernels/cpu/matmul.h):
  // the caller builds the backend with it (SearchBackendOptions, strategy_search.h) and the
  // strategy's note records it. The paper's search is exact (f32); the nll rule defaults to one
  // int8 digit (search_request.h RuleDefaultsFor; docs/METHOD.md §4).
  cpu::Activations activations = cpu::Activations::kF32;
};

// The rule fields of a request, checked before any work: the method's name, K >= 1, R > 0
// and finite, R only with nll. `cli_flags`: errors name the fields as the CLI flags spell them
// ("--best-of") or as the proto fields ("best_of"). Returns the method.
absl::StatusOr<SearchMethod> CheckRuleFields(const std::string& method, int best_of,
                                             std::optional<double> max_nll_increase,
                                             bool cli_flags = true);

// InvalidArgument naming the field (as the CLI spells it), value and limit: CheckRuleFields,
// then ValidateGreedyOptions.
absl::Status ValidateSelectionOptions(const SelectionOptions& options, int n_layers);

// The GreedyOptions the search runs with: kNll's threshold is -R (-infinity without a cap,
// so every candidate passes), because its metric is minus the NLL increase.
GreedyOptions GreedyOptionsFor(const SelectionOptions& options);

// Why a scored candidate was not accepted.
enum class TrialOutcome {
  kAccepted,
  kBelowThreshold,  // score <= threshold: dropped from the order for good
  kOutranked,       // passed, but another candidate of the step scored higher: stays pending
};
const char* TrialOutcomeName(TrialOutcome outcome);

struct SelectionResult {
  // greedy.trace: every candidate scored, in scoring order (accepted only when chosen);
  // greedy.pairs_skipped counts pairs dropped because their i already shared.
  GreedyResult greedy;
  std::vector<TrialOutcome> outcome;  // parallel to greedy.trace
  // Parallel to greedy.trace: acceptances before the candidate was scored (it was scored
  // against the strategy after that many acceptances).
  std::vector<int> step;
};

struct BestOfK {
  int best_of = 1;
  // Lazy evaluation (--lazy): a pending candidate keeps its last score as a bound; each step
  // rescores the candidate with the highest bound (never-scored ones first) until that one was
  // scored against the current strategy, and accepts it. When a candidate's score never rises
  // as the strategy grows (sharing more layers does not help another share), this picks exactly
  // what best-of-K picks, after about K + 2 scorings per step fewer; when it does rise, it may
  // pick differently. Measured, not assumed: bench/strategy_quality_bench.cc.
  bool lazy = false;
};

// The best-of-K rule above over an Evaluator. Errors: invalid options (the target, best_of <
// 1), evaluator failures, Cancelled when *cancel turns true (read before every candidate is
// scored).
absl::StatusOr<SelectionResult> BestOfKSearch(const LayerDistances& distances,
                                              const GreedyOptions& options, const BestOfK& step,
                                              Evaluator& evaluator,
                                              const GreedyProgressFn& progress = nullptr,
                                              const std::atomic<bool>* cancel = nullptr);

}  // namespace kvshare
