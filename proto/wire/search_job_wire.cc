#include "proto/wire/search_job_wire.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "proto/wire/strategy_wire.h"
#include "proto/wire/timestamp_wire.h"

namespace kvshare {

const char* SearchJobStateName(v1::SearchJobState state) {
  switch (state) {
    case v1::SEARCH_JOB_QUEUED:
      return "queued";
    case v1::SEARCH_JOB_RUNNING:
      return "running";
    case v1::SEARCH_JOB_SUCCEEDED:
      return "succeeded";
    case v1::SEARCH_JOB_FAILED:
      return "failed";
    case v1::SEARCH_JOB_CANCELLED:
      return "cancelled";
    default:
      return "?";
  }
}

bool IsTerminalJobState(v1::SearchJobState state) {
  return state == v1::SEARCH_JOB_SUCCEEDED || state == v1::SEARCH_JOB_FAILED ||
         state == v1::SEARCH_JOB_CANCELLED;
}

const char* SearchPhaseDescription(v1::SearchPhase phase) {
  switch (phase) {
    case v1::SEARCH_PHASE_QUEUED:
      return "queued";
    case v1::SEARCH_PHASE_CALIBRATION:
      return "calibration (unshared forward, K/V averages, layer distances)";
    case v1::SEARCH_PHASE_GREEDY:
      return "greedy search";
    case v1::SEARCH_PHASE_QUALITY:
      return "held-out quality (perplexity with and without the strategy)";
    case v1::SEARCH_PHASE_PUBLISHING:
      return "publishing";
    case v1::SEARCH_PHASE_DONE:
      return "done";
    default:
      return "?";
  }
}

int SearchPhaseRank(v1::SearchPhase phase) {
  switch (phase) {
    case v1::SEARCH_PHASE_QUEUED:
      return 1;
    case v1::SEARCH_PHASE_CALIBRATION:
      return 2;
    case v1::SEARCH_PHASE_GREEDY:
      return 3;
    case v1::SEARCH_PHASE_QUALITY:
      return 4;
    case v1::SEARCH_PHASE_PUBLISHING:
      return 5;
    case v1::SEARCH_PHASE_DONE:
      return 6;
    default:
      return 0;
  }
}

v1::SearchPhase ToProto(SearchPhase phase) {
  return phase == SearchPhase::kCalibration ? v1::SEARCH_PHASE_CALIBRATION
                                            : v1::SEARCH_PHASE_GREEDY;
}

double SearchEtaSeconds(const GreedyProgress& g, double greedy_seconds) {
  if (g.pairs_scored <= 0) return -1;
  const double per_pair = greedy_seconds / g.pairs_scored;
  double pairs_left = g.pairs_total - g.pair_index;
  if (g.accepted > 0) {
    const double needed = double(g.target_layers - g.sharing_layers) * g.pairs_scored / g.accepted;
    pairs_left = std::min(pairs_left, std::ceil(needed));
  }
  return per_pair * pairs_left;
}

void StartGreedyProgress(int n_layers, v1::SearchProgress* p) {
  p->set_phase(v1::SEARCH_PHASE_GREEDY);
  p->set_pairs_total(n_layers * (n_layers - 1) / 2);
  p->clear_best_kv_source();
  for (int l = 0; l < n_layers; ++l) p->add_best_kv_source(l);
  p->set_best_score(1.0);
}

void ToProto(const GreedyProgress& g, v1::SearchProgress* p) {
  p->set_phase(v1::SEARCH_PHASE_GREEDY);
  p->set_pairs_done(g.pair_index);
  p->set_pairs_total(g.pairs_total);
  p->set_pairs_tried(g.pairs_scored);
  p->set_accepted(g.accepted);
  p->set_sharing_layers(g.sharing_layers);
  p->set_target_layers(g.target_layers);
  p->set_best_score(g.score);
  p->mutable_best_kv_source()->Assign(g.kv_source.begin(), g.kv_source.end());
  p->set_pair_i(g.pair.i);
  p->set_pair_j(g.pair.j);
}

void FinalProgress(const StrategySearchResult& result, v1::SearchProgress* p) {
  const GreedyResult& g = result.selection.greedy;
  p->set_pairs_tried(static_cast<int>(g.trace.size()));
  p->set_accepted(g.accepted);
  p->set_sharing_layers(result.strategy->sharing_layers());
  p->set_best_score(g.score);
  p->mutable_best_kv_source()->Assign(g.kv_source.begin(), g.kv_source.end());
}

void ToProto(const PairTrial& t, v1::PairTrial* out) {
  out->set_i(t.i);
  out->set_j(t.j);
  out->set_distance(t.distance);
  out->set_score(t.score);
  out->set_accepted(t.accepted);
}

void ToProto(const StrategySearchResult& result, v1::SearchResult* out) {
  const GreedyResult& g = result.selection.greedy;
  ToProto(*result.strategy, out->mutable_strategy());
  out->set_stop_reason(StopReasonName(g.stop));
  out->set_pairs_scored(static_cast<int>(g.trace.size()));
  out->set_pairs_skipped(g.pairs_skipped);
  out->set_accepted(g.accepted);
  for (const PairTrial& t : g.trace) ToProto(t, out->add_trace());
  out->set_calibration_seconds(result.calibration_seconds);
  out->set_greedy_seconds(result.greedy_seconds);
  out->set_total_seconds(result.total_seconds);
}

void EndJob(v1::SearchJobState state, const absl::Status& error, absl::Time end,
            v1::SearchJob* job) {
  job->set_state(state);
  ToTimestamp(end, job->mutable_end_time());
  job->mutable_progress()->set_phase(v1::SEARCH_PHASE_DONE);
  job->mutable_progress()->set_eta_seconds(0);
  if (!error.ok()) {
    job->set_error(std::string(error.message()));
    job->set_error_code(static_cast<int>(error.code()));
  }
}

}  // namespace kvshare
