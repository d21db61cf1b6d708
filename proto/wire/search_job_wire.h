// The search service's jobs on the wire (kvshare.v1.SearchJob and its parts) from the search
// library's types, in one place for the service (search_job_runner), the CLI (`kvshare search
// --server`) and the tests: state and phase names, the progress a search reports, its result,
// how a job ends, and the ETA the progress carries.
#pragma once

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "kvshare/v1/search.pb.h"
#include "search_service/greedy_search.h"
#include "search_service/strategy_search.h"

namespace kvshare {

// "queued", "running", "succeeded", "failed", "cancelled"; "?" for anything else.
const char* SearchJobStateName(v1::SearchJobState state);
// SUCCEEDED, FAILED and CANCELLED: the job will not change again.
bool IsTerminalJobState(v1::SearchJobState state);
// What a phase does, for people reading a progress line.
const char* SearchPhaseDescription(v1::SearchPhase phase);
// The order a job goes through the phases: QUEUED 1, CALIBRATION 2, GREEDY 3, QUALITY 4,
// PUBLISHING 5, DONE 6 (QUALITY is numbered after DONE in the enum); 0 for anything else.
int SearchPhaseRank(v1::SearchPhase phase);
v1::SearchPhase ToProto(SearchPhase phase);

// Seconds left in the greedy phase, estimated before the candidate `progress` describes is
// scored, `greedy_seconds` after the phase began: the scoring rate so far times the candidates
// still needed. At the acceptance rate so far the sharing layers still missing need
// ceil(missing * scored / accepted) more candidates (before any acceptance: every pair left);
// never more than the pairs left in the order. -1 (unknown) before any candidate was scored.
double SearchEtaSeconds(const GreedyProgress& progress, double greedy_seconds);

// The greedy phase begins: the identity strategy of an n_layers model (score 1) and all
// n(n-1)/2 pairs to go.
void StartGreedyProgress(int n_layers, v1::SearchProgress* out);
// Before a candidate is scored: the position in the order, the counts, the current best and the
// pair (phase GREEDY). Leaves elapsed_seconds and eta_seconds alone.
void ToProto(const GreedyProgress& progress, v1::SearchProgress* out);
// A finished search: candidates scored, accepted, sharing layers and the best strategy.
void FinalProgress(const StrategySearchResult& result, v1::SearchProgress* out);

void ToProto(const PairTrial& trial, v1::PairTrial* out);
// The strategy, stop reason, counts, trace and timings (not `published`).
void ToProto(const StrategySearchResult& result, v1::SearchResult* out);

// Ends a job's record at `end`: its state, end_time, phase DONE with eta 0, and, when `error`
// is not OK, its message and (gRPC-numbered) code.
void EndJob(v1::SearchJobState state, const absl::Status& error, absl::Time end,
            v1::SearchJob* job);

}  // namespace kvshare
