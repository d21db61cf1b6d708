// The search job's wire form (proto/wire/search_job_wire.h): the ETA on a table of progress
// states worked out by hand, the state and phase vocabulary, progress and result messages
// carrying the library's values, and how a job's record ends.
#include "proto/wire/search_job_wire.h"

#include <memory>

#include "gtest/gtest.h"
#include "proto/wire/timestamp_wire.h"

namespace kvshare {
namespace {

GreedyProgress Progress(int pair_index, int pairs_total, int pairs_scored, int accepted,
                        int sharing_layers, int target_layers) {
  GreedyProgress g;
  g.pair_index = pair_index;
  g.pairs_total = pairs_total;
  g.pairs_scored = pairs_scored;
  g.accepted = accepted;
  g.sharing_layers = sharing_layers;
  g.target_layers = target_layers;
  return g;
}

TEST(SearchEtaTest, ScoringRateTimesTheCandidatesStillNeededAtMostThePairsLeft) {
  struct Case {
    const char* what;
    GreedyProgress progress;
    double greedy_seconds;
    double eta;
  };
  for (const Case& c : std::vector<Case>{
           {"nothing scored yet: unknown", Progress(0, 10, 0, 0, 0, 4), 5.0, -1},
           {"nothing scored after skips: unknown", Progress(3, 10, 0, 0, 0, 4), 5.0, -1},
           // 0.5 s a pair; no acceptance yet, so every one of the 6 pairs left.
           {"no acceptance: all pairs left", Progress(4, 10, 4, 0, 0, 4), 2.0, 3.0},
           // Skipped pairs count as done: 1 pair left at 1 s a pair.
           {"skipped pairs are behind", Progress(9, 10, 3, 0, 0, 4), 3.0, 1.0},
           // 2 of 4 layers share after 4 scored: 2 more need 2 * 4 / 2 = 4 candidates < 6 left.
           {"acceptance rate says 4 more", Progress(4, 10, 4, 2, 2, 4), 2.0, 2.0},
           // 2 missing * 4 / 3 = 2.67, rounded up to 3 candidates at 1.5 s.
           {"needed candidates round up", Progress(10, 100, 4, 3, 3, 5), 6.0, 4.5},
           // 7 missing * 10 / 1 = 70 candidates, but only 5 pairs left, at 2 s.
           {"never more than the pairs left", Progress(25, 30, 10, 1, 1, 8), 20.0, 10.0},
           {"target reached: nothing left", Progress(6, 10, 5, 2, 2, 2), 5.0, 0.0},
       }) {
    EXPECT_DOUBLE_EQ(SearchEtaSeconds(c.progress, c.greedy_seconds), c.eta) << c.what;
  }
}

TEST(SearchJobWireTest, StateNamesAndTerminalStates) {
  struct Case {
    v1::SearchJobState state;
    const char* name;
    bool terminal;
  };
  for (const Case& c : std::vector<Case>{{v1::SEARCH_JOB_STATE_UNSPECIFIED, "?", false},
                                         {v1::SEARCH_JOB_QUEUED, "queued", false},
                                         {v1::SEARCH_JOB_RUNNING, "running", false},
                                         {v1::SEARCH_JOB_SUCCEEDED, "succeeded", true},
                                         {v1::SEARCH_JOB_FAILED, "failed", true},
                                         {v1::SEARCH_JOB_CANCELLED, "cancelled", true}}) {
    EXPECT_STREQ(SearchJobStateName(c.state), c.name);
    EXPECT_EQ(IsTerminalJobState(c.state), c.terminal) << c.name;
  }
}

TEST(SearchJobWireTest, PhasesRankInTheOrderAJobGoesThroughThem) {
  // QUALITY is numbered after DONE but comes between GREEDY and PUBLISHING.
  const std::vector<v1::SearchPhase> order = {
      v1::SEARCH_PHASE_QUEUED,  v1::SEARCH_PHASE_CALIBRATION, v1::SEARCH_PHASE_GREEDY,
      v1::SEARCH_PHASE_QUALITY, v1::SEARCH_PHASE_PUBLISHING,  v1::SEARCH_PHASE_DONE};
  for (size_t k = 0; k < order.size(); ++k) {
    EXPECT_EQ(SearchPhaseRank(order[k]), int(k) + 1) << order[k];
    EXPECT_STRNE(SearchPhaseDescription(order[k]), "?");
  }
  EXPECT_EQ(SearchPhaseRank(v1::SEARCH_PHASE_UNSPECIFIED), 0);
  EXPECT_EQ(ToProto(SearchPhase::kCalibration), v1::SEARCH_PHASE_CALIBRATION);
  EXPECT_EQ(ToProto(SearchPhase::kGreedy), v1::SEARCH_PHASE_GREEDY);
}

TEST(SearchJobWireTest, ProgressCarriesThePositionCountsAndTheCurrentBest) {
  v1::SearchProgress p;
  StartGreedyProgress(5, &p);
  EXPECT_EQ(p.phase(), v1::SEARCH_PHASE_GREEDY);
  EXPECT_EQ(p.pairs_total(), 10);
  EXPECT_EQ(std::vector<int>(p.best_kv_source().begin(), p.best_kv_source().end()),
            (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(p.best_score(), 1.0);

  GreedyProgress g = Progress(7, 10, 5, 2, 2, 3);
  g.pair = {3, 1};
  g.score = 0.75;
  g.kv_source = {0, 1, 2, 0, 0};
  p.set_elapsed_seconds(12);
  p.set_eta_seconds(4);
  ToProto(g, &p);
  EXPECT_EQ(p.pairs_done(), 7);
  EXPECT_EQ(p.pairs_total(), 10);
  EXPECT_EQ(p.pairs_tried(), 5);
  EXPECT_EQ(p.accepted(), 2);
  EXPECT_EQ(p.sharing_layers(), 2);
  EXPECT_EQ(p.target_layers(), 3);
  EXPECT_EQ(p.best_score(), 0.75);
  EXPECT_EQ(std::vector<int>(p.best_kv_source().begin(), p.best_kv_source().end()), g.kv_source);
  EXPECT_EQ(std::make_pair(p.pair_i(), p.pair_j()), std::make_pair(3, 1));
  EXPECT_EQ(p.elapsed_seconds(), 12);  // left to the caller
  EXPECT_EQ(p.eta_seconds(), 4);
}

TEST(SearchJobWireTest, TheResultCarriesTheStrategyTraceCountsAndTimes) {
  StrategySearchResult r;
  GreedyResult& g = r.selection.greedy;
  g.kv_source = {0, 0, 2, 2};
  g.stop = StopReason::kTargetReached;
  g.pairs_skipped = 3;
  g.accepted = 2;
  g.score = 0.8;
  PairTrial a;
  a.i = 1, a.j = 0, a.distance = 9.5, a.score = 0.9, a.accepted = true;
  PairTrial b;
  b.i = 3, b.j = 1, b.distance = 7.25, b.score = 0.3;
  PairTrial c;
  c.i = 3, c.j = 2, c.distance = 6.0, c.score = 0.8, c.accepted = true;
  g.trace = {a, b, c};
  r.calibration_seconds = 1.5;
  r.greedy_seconds = 2.5;
  r.total_seconds = 4.25;
  auto st = SharingStrategy::Create(g.kv_source, std::string(64, 'a'));
  ASSERT_TRUE(st.ok());
  r.strategy = std::make_shared<const SharingStrategy>(*st);

  v1::SearchResult out;
  ToProto(r, &out);
  EXPECT_EQ(out.strategy().id(), st->id());
  EXPECT_EQ(out.stop_reason(), "target reached");
  EXPECT_EQ(out.pairs_scored(), 3);
  EXPECT_EQ(out.pairs_skipped(), 3);
  EXPECT_EQ(out.accepted(), 2);
  ASSERT_EQ(out.trace_size(), 3);
  EXPECT_EQ(out.trace(1).i(), 3);
  EXPECT_EQ(out.trace(1).j(), 1);
  EXPECT_EQ(out.trace(1).distance(), 7.25);
  EXPECT_EQ(out.trace(1).score(), 0.3);
  EXPECT_FALSE(out.trace(1).accepted());
  EXPECT_TRUE(out.trace(2).accepted());
  EXPECT_EQ(out.calibration_seconds(), 1.5);
  EXPECT_EQ(out.greedy_seconds(), 2.5);
  EXPECT_EQ(out.total_seconds(), 4.25);

  v1::SearchProgress p;
  FinalProgress(r, &p);
  EXPECT_EQ(p.pairs_tried(), 3);
  EXPECT_EQ(p.accepted(), 2);
  EXPECT_EQ(p.sharing_layers(), 2);
  EXPECT_EQ(p.best_score(), 0.8);
  EXPECT_EQ(p.best_kv_source_size(), 4);
}

TEST(SearchJobWireTest, AnEndedJobIsDoneWithItsErrorAndCode) {
  const absl::Time end = absl::FromUnixSeconds(1700000000) + absl::Milliseconds(250);
  v1::SearchJob ok;
  ok.mutable_progress()->set_phase(v1::SEARCH_PHASE_GREEDY);
  ok.mutable_progress()->set_eta_seconds(30);
  EndJob(v1::SEARCH_JOB_SUCCEEDED, absl::OkStatus(), end, &ok);
  EXPECT_EQ(ok.state(), v1::SEARCH_JOB_SUCCEEDED);
  EXPECT_EQ(ok.progress().phase(), v1::SEARCH_PHASE_DONE);
  EXPECT_EQ(ok.progress().eta_seconds(), 0);
  EXPECT_EQ(ok.end_time().seconds(), 1700000000);
  EXPECT_EQ(ok.end_time().nanos(), 250000000);
  EXPECT_EQ(FromTimestamp(ok.end_time()), end);
  EXPECT_EQ(ok.error(), "");
  EXPECT_EQ(ok.error_code(), 0);

  v1::SearchJob failed;
  EndJob(v1::SEARCH_JOB_FAILED, absl::UnavailableError("shut down"), end, &failed);
  EXPECT_EQ(failed.state(), v1::SEARCH_JOB_FAILED);
  EXPECT_EQ(failed.error(), "shut down");
  EXPECT_EQ(failed.error_code(), 14);  // gRPC's UNAVAILABLE
}

}  // namespace
}  // namespace kvshare
