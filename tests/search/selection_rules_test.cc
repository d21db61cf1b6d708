// The selection rules beyond the paper's (search_service/selection_rules.h) on hand-built
// distance and score tables, through an in-memory fake evaluator: best-of-K's choice, what
// stays pending and what is dropped, the NLL acceptance cap, lazy evaluation, stop reasons,
// and bad options rejected before any candidate is scored.
#include "search_service/selection_rules.h"

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <tuple>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "search_service/greedy_search.h"
#include "search_service/search_request.h"

namespace kvshare {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Scores a candidate by a function of its pair (i = its first changed layer, j = the layer i
// now reads) and of how many layers the accepted strategy shares, remembering every call.
class FakeEvaluator : public Evaluator {
 public:
  using ScoreFn = std::function<double(int i, int j, int accepted_sharing)>;
  explicit FakeEvaluator(ScoreFn score) : score_(std::move(score)) {}

  absl::StatusOr<double> Score(const std::vector<int>& kv_source, int first) override {
    scored.push_back({first, kv_source[first]});
    return score_(first, kv_source[first], sharing_);
  }
  absl::Status Accept(const std::vector<int>& kv_source, int first) override {
    accepted.push_back({first, kv_source[first]});
    sharing_ = 0;
    for (size_t l = 0; l < kv_source.size(); ++l) sharing_ += kv_source[l] != int(l);
    return absl::OkStatus();
  }
  std::vector<std::pair<int, int>> scored, accepted;

 private:
  ScoreFn score_;
  int sharing_ = 0;
};

// Distances from a table {i, j, d}; unlisted pairs are 0.
LayerDistances Matrix(int n_layers, const std::vector<std::tuple<int, int, double>>& entries) {
  LayerDistances d(n_layers);
  for (auto [i, j, v] : entries) d.Set(i, j, v, v);
  return d;
}

// 5 layers; dissimilar order: (4,0) (3,0) (4,1) (2,0) (3,1) (4,2) (1,0) (2,1) (3,2) (4,3).
LayerDistances FiveLayers() {
  return Matrix(5, {{4, 0, 10},
                    {3, 0, 9},
                    {4, 1, 8},
                    {2, 0, 7},
                    {3, 1, 6},
                    {4, 2, 5},
                    {1, 0, 4},
                    {2, 1, 3},
                    {3, 2, 2},
                    {4, 3, 1}});
}

GreedyOptions Target(int target, double threshold = 0.5) {
  GreedyOptions o;
  o.target_layers = target;
  o.threshold = threshold;
  return o;
}

std::vector<std::pair<int, int>> TracePairs(const GreedyResult& g) {
  std::vector<std::pair<int, int>> out;
  for (const PairTrial& t : g.trace) out.push_back({t.i, t.j});
  return out;
}

TEST(BestOfKTest, KOfOneIsThePapersGreedyRuleExactly) {
  const LayerDistances d = FiveLayers();
  // Scores that reject some pairs and depend on the accepted strategy.
  auto score = [](int i, int j, int sharing) {
    return 0.9 - 0.1 * ((i * 7 + j * 3) % 5) - 0.05 * sharing;
  };
  for (PairOrder order : {PairOrder::kDissimilar, PairOrder::kSimilar, PairOrder::kRandom}) {
    for (int target : {1, 2, 3, 4}) {
      GreedyOptions o = Target(target);
      o.order = order;
      o.seed = 7;
      FakeEvaluator a(score), b(score);
      auto greedy = GreedySearch(d, o, a);
      auto best1 = BestOfKSearch(d, o, {1, false}, b);
      ASSERT_TRUE(greedy.ok() && best1.ok());
      EXPECT_EQ(best1->greedy.kv_source, greedy->kv_source);
      EXPECT_EQ(TracePairs(best1->greedy), TracePairs(*greedy));
      EXPECT_EQ(best1->greedy.stop, greedy->stop);
      EXPECT_EQ(best1->greedy.pairs_skipped, greedy->pairs_skipped);
      EXPECT_EQ(best1->greedy.accepted, greedy->accepted);
      EXPECT_EQ(b.scored, a.scored);
      EXPECT_EQ(b.accepted, a.accepted);
    }
  }
}

TEST(BestOfKTest, AcceptsTheBestOfTheNextKNotTheFirst) {
  // Scores by pair; (3,0) is the best of the first three of the order.
  std::map<std::pair<int, int>, double> table = {{{4, 0}, 0.6}, {{3, 0}, 0.9}, {{4, 1}, 0.7}};
  FakeEvaluator e([&](int i, int j, int) {
    auto it = table.find({i, j});
    return it == table.end() ? 0.55 : it->second;
  });
  auto r = BestOfKSearch(FiveLayers(), Target(1), {3, false}, e);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(e.scored, ElementsAre(std::pair{4, 0}, std::pair{3, 0}, std::pair{4, 1}));
  EXPECT_THAT(e.accepted, ElementsAre(std::pair{3, 0}));
  EXPECT_EQ(r->greedy.kv_source, (std::vector<int>{0, 1, 2, 0, 4}));
  EXPECT_EQ(r->greedy.stop, StopReason::kTargetReached);
  EXPECT_THAT(r->outcome, ElementsAre(TrialOutcome::kOutranked, TrialOutcome::kAccepted,
                                      TrialOutcome::kOutranked));
  EXPECT_THAT(r->step, ElementsAre(0, 0, 0));
  EXPECT_DOUBLE_EQ(r->greedy.score, 0.9);
}

TEST(BestOfKTest, OutrankedCandidatesStayPendingAndAreScoredAgainstTheNewStrategy) {
  // Step 0 scores (4,0) (3,0) (4,1) and accepts (3,0). Step 1: (4,0) and (4,1) are pending,
  // (2,0) joins; (3,1) would be skipped (3 shares). The scores after one acceptance favour
  // (4,1).
  FakeEvaluator e([](int i, int j, int sharing) {
    if (sharing == 0) return (i == 3 && j == 0) ? 0.9 : 0.6;
    return (i == 4 && j == 1) ? 0.8 : 0.7;
  });
  auto r = BestOfKSearch(FiveLayers(), Target(2), {3, false}, e);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(e.scored, ElementsAre(std::pair{4, 0}, std::pair{3, 0}, std::pair{4, 1},
                                    std::pair{4, 0}, std::pair{4, 1}, std::pair{2, 0}));
  EXPECT_THAT(e.accepted, ElementsAre(std::pair{3, 0}, std::pair{4, 1}));
  EXPECT_EQ(r->greedy.kv_source, (std::vector<int>{0, 1, 2, 0, 1}));
  EXPECT_THAT(r->step, ElementsAre(0, 0, 0, 1, 1, 1));
  EXPECT_EQ(r->greedy.accepted, 2);
  // The trace replays to the same strategies (the prefix property the benchmark uses).
  auto after1 = StrategyAfterAccepts(r->greedy.trace, 5, 1);
  ASSERT_TRUE(after1.ok());
  EXPECT_EQ(*after1, (std::vector<int>{0, 1, 2, 0, 4}));
}

TEST(BestOfKTest, CandidatesAtOrBelowTheThresholdAreDroppedForGood) {
  // (4,0) fails at step 0 and is never scored again, though it would pass later.
  FakeEvaluator e([](int i, int j, int sharing) {
    if (i == 4 && j == 0) return sharing == 0 ? 0.5 : 0.99;  // 0.5 is not above 0.5
    if (i == 2 && j == 0) return 0.8;
    return (i == 3 && j == 0) ? 0.9 : 0.6;
  });
  auto r = BestOfKSearch(FiveLayers(), Target(2), {2, false}, e);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(e.scored,
              ElementsAre(std::pair{4, 0}, std::pair{3, 0}, std::pair{4, 1}, std::pair{2, 0}));
  EXPECT_THAT(r->outcome, ElementsAre(TrialOutcome::kBelowThreshold, TrialOutcome::kAccepted,
                                      TrialOutcome::kOutranked, TrialOutcome::kAccepted));
  EXPECT_THAT(e.accepted, ElementsAre(std::pair{3, 0}, std::pair{2, 0}));
}

TEST(BestOfKTest, TiesGoToTheEarlierPairOfTheOrder) {
  FakeEvaluator e([](int, int, int) { return 0.7; });
  auto r = BestOfKSearch(FiveLayers(), Target(1), {4, false}, e);
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(e.accepted, ElementsAre(std::pair{4, 0}));
}

TEST(BestOfKTest, StopsWhenThePairsRunOutSayingSo) {
  // Only (1,0) and (3,2) pass: two layers share at most, short of a target of 3.
  FakeEvaluator e(
      [](int i, int j, int) { return (i == 1 && j == 0) || (i == 3 && j == 2) ? 0.9 : 0.1; });
  auto r = BestOfKSearch(FiveLayers(), Target(3), {3, false}, e);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->greedy.stop, StopReason::kPairsExhausted);
  EXPECT_THAT(e.accepted, ElementsAre(std::pair{1, 0}, std::pair{3, 2}));
  EXPECT_EQ(r->greedy.kv_source, (std::vector<int>{0, 0, 2, 2, 4}));
}

TEST(BestOfKTest, StopsAtTheTargetWithoutScoringFurther) {
  FakeEvaluator e([](int, int, int) { return 0.9; });
  auto r = BestOfKSearch(FiveLayers(), Target(2), {2, false}, e);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->greedy.stop, StopReason::kTargetReached);
  EXPECT_EQ(r->greedy.accepted, 2);
  // Step 0: (4,0) (3,0) -> (4,0). Step 1: (3,0) pending, (4,1) skipped, (2,0) -> (3,0).
  EXPECT_THAT(e.scored,
              ElementsAre(std::pair{4, 0}, std::pair{3, 0}, std::pair{3, 0}, std::pair{2, 0}));
  EXPECT_EQ(r->greedy.pairs_skipped, 1);
}

// The NLL rule: the evaluator's metric is minus the calibration NLL increase; the threshold
// is -R, so a candidate is accepted when its increase is below R.
TEST(NllRuleTest, AcceptsWhileTheNllIncreaseStaysBelowTheCap) {
  SelectionOptions s;
  s.method = SearchMethod::kNll;
  s.max_nll_increase = 0.3;
  s.greedy = Target(3);
  const GreedyOptions g = GreedyOptionsFor(s);
  EXPECT_DOUBLE_EQ(g.threshold, -0.3);
  // NLL increase of the whole candidate: 0.1 per sharing layer, plus 0.25 for pairs across
  // more than one layer.
  FakeEvaluator e([](int i, int j, int sharing) {
    const double increase = 0.1 * (sharing + 1) + (i - j > 1 ? 0.25 : 0.0);
    return -increase;
  });
  auto r = BestOfKSearch(FiveLayers(), g, {1, false}, e);
  ASSERT_TRUE(r.ok());
  // Far pairs are rejected (0.35 >= 0.3). (1,0) passes at 0.1; then (2,1) would read root(1)
  // = 0, a far pair (rejected); (3,2) passes at 0.2; (4,3) would be at 0.3, not below the
  // cap: the pairs run out at two.
  EXPECT_THAT(e.accepted, ElementsAre(std::pair{1, 0}, std::pair{3, 2}));
  EXPECT_EQ(r->greedy.stop, StopReason::kPairsExhausted);
  EXPECT_NEAR(r->greedy.score, -0.2, 1e-12);
}

TEST(NllRuleTest, WithoutACapEveryCandidatePasses) {
  SelectionOptions s;
  s.method = SearchMethod::kNll;
  s.greedy = Target(2);
  const GreedyOptions g = GreedyOptionsFor(s);
  EXPECT_EQ(g.threshold, -std::numeric_limits<double>::infinity());
  FakeEvaluator e([](int i, int j, int) { return -10.0 * (i - j); });
  auto r = BestOfKSearch(FiveLayers(), g, {10, false}, e);
  ASSERT_TRUE(r.ok());
  // Best of all ten: the smallest increase; the adjacent pairs tie, the earliest wins.
  EXPECT_EQ(e.accepted.front(), (std::pair{1, 0}));
  EXPECT_EQ(r->greedy.accepted, 2);
}

TEST(NllRuleTest, KvSharerKeepsItsCosineThreshold) {
  SelectionOptions s;
  s.greedy = Target(2, 0.7);
  EXPECT_DOUBLE_EQ(GreedyOptionsFor(s).threshold, 0.7);
}

TEST(LazyBestOfKTest, PicksWhatBestOfKPicksWhenScoresOnlyFallAsTheStrategyGrows) {
  // Monotone: every candidate's score falls with each acceptance.
  // (The fake sees root(j), which may drop below j as layers share; the 0.001 * j term moves
  // less than one acceptance's fall.)
  auto score = [](int i, int j, int sharing) {
    return 0.95 - 0.03 * ((i * 5) % 7) - 0.001 * j - 0.04 * sharing * (1 + i % 3);
  };
  for (PairOrder order : {PairOrder::kDissimilar, PairOrder::kSimilar}) {
    for (int k : {2, 3, 5, 10}) {
      GreedyOptions o = Target(4, 0.0);
      o.order = order;
      FakeEvaluator exact(score), lazy(score);
      auto a = BestOfKSearch(FiveLayers(), o, {k, false}, exact);
      auto b = BestOfKSearch(FiveLayers(), o, {k, true}, lazy);
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_EQ(lazy.accepted, exact.accepted) << "K " << k;
      EXPECT_EQ(b->greedy.kv_source, a->greedy.kv_source);
      EXPECT_LE(lazy.scored.size(), exact.scored.size());
    }
  }
}

TEST(LazyBestOfKTest, RescoresOnlyUntilTheHighestBoundIsCurrent) {
  // Step 0 scores all three: (4,0) 0.6, (3,0) 0.9, (4,1) 0.8; accepts (3,0). Step 1: (2,0)
  // is new (scored: 0.5); then (4,1) has the highest bound (0.8), rescored at 0.75, still
  // above (4,0)'s stale 0.6: accepted without rescoring (4,0).
  FakeEvaluator e([](int i, int j, int sharing) {
    if (i == 4 && j == 0) return 0.6;
    if (i == 3 && j == 0) return 0.9;
    if (i == 4 && j == 1) return sharing == 0 ? 0.8 : 0.75;
    return 0.5 + 0.0 * sharing;
  });
  auto r = BestOfKSearch(FiveLayers(), Target(2, 0.0), {3, true}, e);
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(e.scored, ElementsAre(std::pair{4, 0}, std::pair{3, 0}, std::pair{4, 1},
                                    std::pair{2, 0}, std::pair{4, 1}));
  EXPECT_THAT(e.accepted, ElementsAre(std::pair{3, 0}, std::pair{4, 1}));
}

TEST(LazyBestOfKTest, MayDifferFromBestOfKWhenAScoreRises) {
  // (4,0) scores 0.6 alone but 0.95 once (3,0) shares; lazy keeps its stale 0.6 below
  // (4,1)'s current 0.8 and never looks again; exact best-of-K sees 0.95.
  auto score = [](int i, int j, int sharing) {
    if (i == 4 && j == 0) return sharing == 0 ? 0.6 : 0.95;
    if (i == 3 && j == 0) return 0.9;
    if (i == 4 && j == 1) return 0.8;
    return 0.1;
  };
  FakeEvaluator exact(score), lazy(score);
  ASSERT_TRUE(BestOfKSearch(FiveLayers(), Target(2, 0.0), {3, false}, exact).ok());
  ASSERT_TRUE(BestOfKSearch(FiveLayers(), Target(2, 0.0), {3, true}, lazy).ok());
  EXPECT_EQ(exact.accepted.back(), (std::pair{4, 0}));
  EXPECT_EQ(lazy.accepted.back(), (std::pair{4, 1}));
}

TEST(SelectionOptionsTest, BadOptionsAreRejectedBeforeAnyCandidateIsScored) {
  FakeEvaluator e([](int, int, int) { return 0.9; });
  auto r = BestOfKSearch(FiveLayers(), Target(2), {0, false}, e);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("--best-of 0"));
  r = BestOfKSearch(FiveLayers(), Target(5), {2, false}, e);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("target layers 5"));
  EXPECT_TRUE(e.scored.empty());

  SelectionOptions s;
  s.greedy = Target(2);
  s.best_of = 0;
  EXPECT_THAT(ValidateSelectionOptions(s, 5).message(), HasSubstr("--best-of 0 must be >= 1"));
  s.best_of = -3;
  EXPECT_THAT(ValidateSelectionOptions(s, 5).message(), HasSubstr("--best-of -3"));
  s.best_of = 1;
  s.method = SearchMethod::kNll;
  for (double bad : {0.0, -0.5, std::nan(""), std::numeric_limits<double>::infinity()}) {
    s.max_nll_increase = bad;
    const absl::Status st = ValidateSelectionOptions(s, 5);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(st.message(), HasSubstr("--max-nll-increase")) << bad;
    EXPECT_THAT(st.message(), HasSubstr("must be > 0")) << bad;
  }
  s.max_nll_increase = 0.5;
  EXPECT_TRUE(ValidateSelectionOptions(s, 5).ok());
  s.method = SearchMethod::kKvSharer;
  EXPECT_THAT(ValidateSelectionOptions(s, 5).message(),
              HasSubstr("--max-nll-increase 0.5 applies to --method nll"));
  s.max_nll_increase.reset();
  s.greedy.target_layers = 0;
  EXPECT_THAT(ValidateSelectionOptions(s, 5).message(), HasSubstr("target layers 0"));

  auto m = ParseSearchMethod("kvsharer2");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(m.status().message(), HasSubstr("--method 'kvsharer2' is not one of kvsharer, nll"));
  EXPECT_EQ(*ParseSearchMethod("kvsharer"), SearchMethod::kKvSharer);
  EXPECT_EQ(*ParseSearchMethod("nll"), SearchMethod::kNll);
}

TEST(SelectionOptionsTest, TheSearchRequestRejectsBadRulesBeforeReadingTheCalibrationFile) {
  // The calibration file does not exist: a bad rule must be reported first (no work done).
  SearchRequest r;
  r.calibration_path = "/nonexistent/calibration.txt";
  r.method = "best";
  auto checked = CheckSearchRequest(r);
  ASSERT_FALSE(checked.ok());
  EXPECT_THAT(checked.status().message(), HasSubstr("--method 'best'"));
  r.method = "nll";
  r.best_of = 0;
  EXPECT_THAT(CheckSearchRequest(r).status().message(), HasSubstr("--best-of 0"));
  r.best_of = 4;
  r.max_nll_increase = 0.0;
  EXPECT_THAT(CheckSearchRequest(r).status().message(), HasSubstr("--max-nll-increase 0"));
  r.max_nll_increase = 0.5;
  // Now only the missing file is wrong.
  EXPECT_THAT(CheckSearchRequest(r).status().message(), HasSubstr("--calibration"));
}

}  // namespace
}  // namespace kvshare
