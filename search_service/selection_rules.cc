#include "search_service/selection_rules.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"

namespace kvshare {

const char* SearchMethodName(SearchMethod method) {
  switch (method) {
    case SearchMethod::kKvSharer:
      return "kvsharer";
    case SearchMethod::kNll:
      return "nll";
  }
  return "?";
}

absl::StatusOr<SearchMethod> ParseSearchMethod(const std::string& name) {
  for (SearchMethod m : {SearchMethod::kKvSharer, SearchMethod::kNll}) {
    if (name == SearchMethodName(m)) return m;
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("--method '%s' is not one of kvsharer, nll", name));
}

absl::StatusOr<SearchMethod> CheckRuleFields(const std::string& method, int best_of,
                                             std::optional<double> max_nll_increase,
                                             bool cli_flags) {
  const char* f_method = cli_flags ? "--method" : "method";
  const char* f_best_of = cli_flags ? "--best-of" : "best_of";
  const char* f_r = cli_flags ? "--max-nll-increase" : "max_nll_increase";
  auto m = ParseSearchMethod(method);
  if (!m.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s '%s' is not one of kvsharer, nll", f_method, method));
  }
  if (best_of < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s %d must be >= 1 (candidates scored per step; 1 = the paper's rule)",
                        f_best_of, best_of));
  }
  if (max_nll_increase.has_value()) {
    const double r = *max_nll_increase;
    if (*m != SearchMethod::kNll) {
      return absl::InvalidArgumentError(absl::StrFormat("%s %g applies to %s nll, not %s %s", f_r,
                                                        r, f_method, f_method, method));
    }
    if (!(r > 0) || !std::isfinite(r)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s %g must be > 0 (nats/token over the unshared model)", f_r, r));
    }
  }
  return *m;
}

const char* TrialOutcomeName(TrialOutcome outcome) {
  switch (outcome) {
    case TrialOutcome::kAccepted:
      return "accepted";
    case TrialOutcome::kBelowThreshold:
      return "rejected";
    case TrialOutcome::kOutranked:
      return "outranked";
  }
  return "?";
}

absl::Status ValidateSelectionOptions(const SelectionOptions& options, int n_layers) {
  auto m =
      CheckRuleFields(SearchMethodName(options.method), options.best_of, options.max_nll_increase);
  if (!m.ok()) return m.status();
  if (options.calibrated && options.method != SearchMethod::kNll) {
    return absl::InvalidArgumentError(
        absl::StrFormat("calibrated scoring applies to --method nll, not --method %s",
                        SearchMethodName(options.method)));
  }
  if (options.calibrated && !(options.calibration_ridge > 0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("calibration ridge %g must be > 0", options.calibration_ridge));
  }
  // The threshold field is the cosine threshold; kNll does not use it (GreedyOptionsFor), and
  // GreedyOptions' default is valid either way.
  return ValidateGreedyOptions(options.greedy, n_layers);
}

GreedyOptions GreedyOptionsFor(const SelectionOptions& options) {
  GreedyOptions g = options.greedy;
  if (options.method == SearchMethod::kNll) {
    g.threshold = options.max_nll_increase.has_value() ? -*options.max_nll_increase
                                                       : -std::numeric_limits<double>::infinity();
  }
  return g;
}

absl::StatusOr<SelectionResult> BestOfKSearch(const LayerDistances& distances,
                                              const GreedyOptions& options, const BestOfK& step,
                                              Evaluator& evaluator,
                                              const GreedyProgressFn& progress,
                                              const std::atomic<bool>* cancel) {
  const int L = distances.n_layers();
  if (step.best_of < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("--best-of %d must be >= 1", step.best_of));
  }
  // The threshold may lie outside the cosine range here (kNll's is -R), so only the target is
  // checked, as ValidateGreedyOptions does.
  if (L < 2 || options.target_layers < 1 || options.target_layers > L - 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "target layers %d must be in [1, %d] (layer 0 always owns; the model has %d layers)",
        options.target_layers, L - 1, L));
  }

  SelectionResult out;
  GreedyResult& result = out.greedy;
  result.kv_source.resize(L);
  for (int l = 0; l < L; ++l) result.kv_source[l] = l;
  const std::vector<LayerPair> pairs = OrderPairs(distances, options.order, options.seed);

  // A pending candidate: its pair, and its last score (an upper bound on its score against
  // the accepted strategy when that is newer) with the acceptance count it was scored at.
  struct Pending {
    size_t pair = 0;
    double bound = std::numeric_limits<double>::infinity();  // never scored
    int scored_at = -1;
    size_t trial = 0;  // its last trace entry
  };
  size_t next = 0;              // the first pair of the order not yet in the window
  std::vector<Pending> window;  // in pair order
  int sharing = 0;

  // Scores window[w] against the accepted strategy; false when it fell to the threshold (then
  // it is gone from the window).
  auto score_entry = [&](size_t w) -> absl::StatusOr<bool> {
    const auto [i, j] = pairs[window[w].pair];
    if (progress) progress(ProgressBefore(result, pairs, window[w].pair, options.target_layers));
    if (cancel != nullptr && cancel->load(std::memory_order_acquire)) {
      return absl::CancelledError(
          absl::StrFormat("search cancelled after %d candidates scored (%d accepted)",
                          result.trace.size(), result.accepted));
    }
    PairTrial trial = CandidateTrial(distances, result.kv_source, i, j);
    // Layers below i are unchanged by the candidate rule.
    auto score = evaluator.Score(trial.kv_source, i);
    if (!score.ok()) return score.status();
    trial.score = *score;
    const bool passes = trial.score > options.threshold;
    out.outcome.push_back(passes ? TrialOutcome::kOutranked : TrialOutcome::kBelowThreshold);
    out.step.push_back(result.accepted);
    window[w].bound = trial.score;
    window[w].scored_at = result.accepted;
    window[w].trial = result.trace.size();
    result.trace.push_back(std::move(trial));
    if (!passes) window.erase(window.begin() + w);
    return passes;
  };
  // The entry with the highest bound; ties go to the earlier pair of the order.
  auto top = [&]() {
    size_t best = 0;
    for (size_t w = 1; w < window.size(); ++w) {
      if (window[w].bound > window[best].bound) best = w;
    }
    return best;
  };

  for (;;) {
    // Pairs whose i already shares leave the window; new ones fill it up to K.
    std::vector<Pending> kept;
    for (const Pending& e : window) {
      if (result.kv_source[pairs[e.pair].i] != pairs[e.pair].i) {
        ++result.pairs_skipped;
      } else {
        kept.push_back(e);
      }
    }
    window = std::move(kept);
    while (int(window.size()) < step.best_of && next < pairs.size()) {
      const size_t p = next++;
      if (result.kv_source[pairs[p].i] != pairs[p].i) {
        ++result.pairs_skipped;
      } else {
        Pending e;
        e.pair = p;
        window.push_back(e);
      }
    }
    if (window.empty()) break;

    if (!step.lazy) {
      // Score the whole window against the accepted strategy.
      for (size_t w = 0; w < window.size();) {
        auto passed = score_entry(w);
        if (!passed.ok()) return passed.status();
        if (*passed) ++w;
      }
    } else {
      // Rescore the highest bound until the highest is current: under monotone scores no
      // other candidate can beat it.
      while (!window.empty() && window[top()].scored_at != result.accepted) {
        auto passed = score_entry(top());
        if (!passed.ok()) return passed.status();
      }
    }
    if (window.empty()) continue;  // every candidate of the step was rejected: refill

    const size_t best = top();
    PairTrial& chosen = result.trace[window[best].trial];
    absl::Status s = evaluator.Accept(chosen.kv_source, chosen.i);
    if (!s.ok()) return s;
    chosen.accepted = true;
    out.outcome[window[best].trial] = TrialOutcome::kAccepted;
    result.kv_source = chosen.kv_source;
    result.score = chosen.score;
    ++result.accepted;
    sharing = CountSharingLayers(result.kv_source);
    window.erase(window.begin() + best);
    if (sharing >= options.target_layers) {
      result.stop = StopReason::kTargetReached;
      return out;
    }
  }
  result.stop = StopReason::kPairsExhausted;
  return out;
}

}  // namespace kvshare
