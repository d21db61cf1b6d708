// The greedy rules of the KVSharer search (docs/METHOD.md §3) on hand-built distance matrices,
// scored by an in-memory fake evaluator: pair order, skip, chain collapse, threshold, stop
// reasons, the prefix property the benchmark relies on, and best-of-1 selection (what
// RunStrategySearch runs) making exactly GreedySearch's choices.
#include "search_service/greedy_search.h"

#include <algorithm>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <tuple>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "search_service/selection_rules.h"
#include "tests/support/paper_search.h"

namespace kvshare {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// Scores candidates by a function of (i, j), remembering every call.
class FakeEvaluator : public Evaluator {
 public:
  struct Call {
    std::vector<int> kv_source;
    int first_changed;
    bool accept;
  };
  explicit FakeEvaluator(std::function<double(int i, int j)> score) : score_(std::move(score)) {}

  absl::StatusOr<double> Score(const std::vector<int>& kv_source, int first) override {
    if (fail_after_ >= 0 && int(calls_.size()) >= fail_after_) {
      return absl::InternalError("fake evaluator failure");
    }
    calls_.push_back({kv_source, first, false});
    // The pair is recoverable from the candidate: i is the first layer that changed.
    return score_(first, kv_source[first]);
  }
  absl::Status Accept(const std::vector<int>& kv_source, int first) override {
    calls_.push_back({kv_source, first, true});
    return absl::OkStatus();
  }
  std::vector<Call> calls_;
  int fail_after_ = -1;

 private:
  std::function<double(int, int)> score_;
};

// Distances from a table {i, j, d} (dK = dV = d); unlisted pairs are 0.
LayerDistances Matrix(int n_layers, const std::vector<std::tuple<int, int, double>>& entries) {
  LayerDistances d(n_layers);
  for (auto [i, j, v] : entries) d.Set(i, j, v, v);
  return d;
}

std::vector<std::pair<int, int>> Pairs(const std::vector<LayerPair>& pairs) {
  std::vector<std::pair<int, int>> out;
  for (const LayerPair& p : pairs) out.push_back({p.i, p.j});
  return out;
}

GreedyOptions Options(int target, double threshold = 0.5) {
  GreedyOptions o;
  o.target_layers = target;
  o.threshold = threshold;
  return o;
}

TEST(OrderPairsTest, DissimilarIsDistanceDescendingWithTiesByIThenJ) {
  const LayerDistances d =
      Matrix(4, {{1, 0, 2.0}, {2, 0, 5.0}, {2, 1, 2.0}, {3, 0, 1.0}, {3, 1, 5.0}, {3, 2, 2.0}});
  EXPECT_THAT(Pairs(OrderPairs(d, PairOrder::kDissimilar, 0)),
              ElementsAre(std::pair{2, 0}, std::pair{3, 1}, std::pair{1, 0}, std::pair{2, 1},
                          std::pair{3, 2}, std::pair{3, 0}));
}

TEST(OrderPairsTest, SimilarIsDistanceAscendingWithTiesByIThenJ) {
  const LayerDistances d =
      Matrix(4, {{1, 0, 2.0}, {2, 0, 5.0}, {2, 1, 2.0}, {3, 0, 1.0}, {3, 1, 5.0}, {3, 2, 2.0}});
  EXPECT_THAT(Pairs(OrderPairs(d, PairOrder::kSimilar, 0)),
              ElementsAre(std::pair{3, 0}, std::pair{1, 0}, std::pair{2, 1}, std::pair{3, 2},
                          std::pair{2, 0}, std::pair{3, 1}));
}

TEST(OrderPairsTest, DissimilarAndSimilarUseTheMeanOfKAndVDistances) {
  LayerDistances d(3);
  d.Set(1, 0, 4.0, 0.0);  // mean 2
  d.Set(2, 0, 1.0, 2.0);  // mean 1.5
  d.Set(2, 1, 0.0, 5.0);  // mean 2.5
  EXPECT_DOUBLE_EQ(d.distance(1, 0), 2.0);
  EXPECT_THAT(Pairs(OrderPairs(d, PairOrder::kDissimilar, 0)),
              ElementsAre(std::pair{2, 1}, std::pair{1, 0}, std::pair{2, 0}));
}

TEST(OrderPairsTest, RandomIsTheDocumentedFisherYatesOverMt19937_64) {
  const LayerDistances d(7);
  for (uint64_t seed : {0ull, 1ull, 42ull, 0xdeadbeefull}) {
    // The documented algorithm, written out independently.
    std::vector<std::pair<int, int>> want;
    for (int i = 1; i < 7; ++i) {
      for (int j = 0; j < i; ++j) want.push_back({i, j});
    }
    std::mt19937_64 rng(seed);
    for (size_t k = want.size() - 1; k >= 1; --k) {
      const uint64_t bound = k + 1;
      const uint64_t limit = (~uint64_t{0} - bound + 1) % bound;
      uint64_t u;
      do u = rng();
      while (u < limit);
      std::swap(want[k], want[u % bound]);
    }
    EXPECT_EQ(Pairs(OrderPairs(d, PairOrder::kRandom, seed)), want) << "seed " << seed;
  }
  EXPECT_NE(Pairs(OrderPairs(d, PairOrder::kRandom, 1)),
            Pairs(OrderPairs(d, PairOrder::kRandom, 2)));
}

TEST(ApplyPairTest, LaterLayerReadsTheRootOfTheEarlierOne) {
  EXPECT_THAT(ApplyPair({0, 1, 2, 3}, 3, 1), ElementsAre(0, 1, 2, 1));
  // j itself shares layer 0: i reads the root, 0, not j (chains collapse to roots).
  EXPECT_THAT(ApplyPair({0, 0, 2, 3}, 3, 1), ElementsAre(0, 0, 2, 0));
}

TEST(ApplyPairTest, LayersThatReadTheLaterLayerFollowItToTheNewRoot) {
  // Layers 3 and 5 read 2; sharing 2 with 1 moves all three to 1.
  EXPECT_THAT(ApplyPair({0, 1, 2, 2, 4, 2}, 2, 1), ElementsAre(0, 1, 1, 1, 4, 1));
  // ... and to 1's root when 1 shares too.
  EXPECT_THAT(ApplyPair({0, 0, 2, 2, 4, 2}, 2, 1), ElementsAre(0, 0, 0, 0, 4, 0));
}

TEST(GreedySearchTest, AcceptsAboveThresholdAndPassesTheFirstChangedLayer) {
  const LayerDistances d = Matrix(4, {{3, 0, 9}, {2, 1, 8}, {3, 1, 7}});
  FakeEvaluator fake([](int, int) { return 0.9; });
  auto r = GreedySearch(d, Options(2), fake);
  ASSERT_TRUE(r.ok()) << r.status();
  // (3, 0) accepted; (2, 1) accepted: target of 2 reached.
  EXPECT_THAT(r->kv_source, ElementsAre(0, 1, 1, 0));
  EXPECT_EQ(r->stop, StopReason::kTargetReached);
  ASSERT_EQ(r->trace.size(), 2u);
  EXPECT_EQ(r->trace[0].i, 3);
  EXPECT_EQ(r->trace[0].j, 0);
  EXPECT_DOUBLE_EQ(r->trace[0].distance, 9);
  EXPECT_DOUBLE_EQ(r->trace[0].score, 0.9);
  EXPECT_TRUE(r->trace[0].accepted);
  ASSERT_EQ(fake.calls_.size(), 4u);
  EXPECT_EQ(fake.calls_[0].first_changed, 3);
  EXPECT_TRUE(fake.calls_[1].accept);
  EXPECT_EQ(fake.calls_[2].first_changed, 2);
  EXPECT_THAT(fake.calls_[3].kv_source, ElementsAre(0, 1, 1, 0));
  EXPECT_DOUBLE_EQ(r->score, 0.9);
}

TEST(GreedySearchTest, AScoreEqualToTheThresholdIsRejected) {
  const LayerDistances d = Matrix(3, {{2, 0, 3}, {2, 1, 2}, {1, 0, 1}});
  FakeEvaluator fake([](int i, int j) { return i == 2 && j == 0 ? 0.5 : 0.75; });
  auto r = GreedySearch(d, Options(1, 0.5), fake);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->trace.size(), 2u);
  EXPECT_FALSE(r->trace[0].accepted);  // 0.5 is not above 0.5
  EXPECT_TRUE(r->trace[1].accepted);
  EXPECT_THAT(r->kv_source, ElementsAre(0, 1, 1));
  for (const auto& call : fake.calls_) {
    if (call.accept) {
      EXPECT_THAT(call.kv_source, ElementsAre(0, 1, 1));
    }
  }
}

TEST(GreedySearchTest, PairsWhoseLaterLayerAlreadySharesAreSkippedUnscored) {
  // (3, 0) accepted first; (3, 1) and (3, 2) come next and must be skipped; then (2, 1).
  const LayerDistances d = Matrix(4, {{3, 0, 9}, {3, 1, 8}, {3, 2, 7}, {2, 1, 6}});
  FakeEvaluator fake([](int, int) { return 1.0; });
  auto r = GreedySearch(d, Options(2), fake);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->trace.size(), 2u);
  EXPECT_EQ(std::pair(r->trace[1].i, r->trace[1].j), std::pair(2, 1));
  EXPECT_EQ(r->pairs_skipped, 2);
  int scored_with_3 = 0;
  for (const auto& call : fake.calls_) scored_with_3 += !call.accept && call.first_changed == 3;
  EXPECT_EQ(scored_with_3, 1);
}

TEST(GreedySearchTest, ChainsCollapseWhenAnEarlierLayerOfAChainShares) {
  // Accept (4, 2): 4 reads 2. Then (2, 0): 2 and 4 read 0. Then (3, 1): 3 reads 1.
  const LayerDistances d = Matrix(5, {{4, 2, 9}, {2, 0, 8}, {3, 1, 7}});
  FakeEvaluator fake([](int, int) { return 0.8; });
  auto r = GreedySearch(d, Options(3), fake);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->trace.size(), 3u);
  EXPECT_THAT(r->trace[0].kv_source, ElementsAre(0, 1, 2, 3, 2));
  EXPECT_THAT(r->trace[1].kv_source, ElementsAre(0, 1, 0, 3, 0));
  EXPECT_THAT(r->kv_source, ElementsAre(0, 1, 0, 1, 0));
  EXPECT_EQ(fake.calls_[2].first_changed, 2);  // the candidate changes layers 2 and 4
}

TEST(GreedySearchTest, AnEarlierLayerThatSharesIsReadThroughItsRoot) {
  // Accept (1, 0), then (3, 1): 3 reads root(1) = 0.
  const LayerDistances d = Matrix(4, {{1, 0, 9}, {3, 1, 8}});
  FakeEvaluator fake([](int, int) { return 0.8; });
  auto r = GreedySearch(d, Options(2), fake);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->kv_source, ElementsAre(0, 0, 2, 0));
}

TEST(GreedySearchTest, StopsAtTheTargetWithoutScoringFurtherPairs) {
  const LayerDistances d = Matrix(6, {{5, 0, 9}, {4, 0, 8}, {3, 0, 7}, {2, 0, 6}});
  FakeEvaluator fake([](int, int) { return 0.99; });
  auto r = GreedySearch(d, Options(2), fake);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stop, StopReason::kTargetReached);
  EXPECT_EQ(r->trace.size(), 2u);
  EXPECT_EQ(fake.calls_.size(), 4u);  // two scores, two accepts
  EXPECT_STREQ(StopReasonName(r->stop), "target reached");
}

TEST(GreedySearchTest, WhenEveryCandidateIsRejectedAllPairsAreTriedAndPairsRunOut) {
  const LayerDistances d = Matrix(4, {{3, 0, 1}});
  FakeEvaluator fake([](int, int) { return 0.1; });
  auto r = GreedySearch(d, Options(2), fake);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stop, StopReason::kPairsExhausted);
  EXPECT_EQ(r->trace.size(), 6u);
  EXPECT_EQ(r->accepted, 0);
  EXPECT_THAT(r->kv_source, ElementsAre(0, 1, 2, 3));
  EXPECT_DOUBLE_EQ(r->score, 1.0);
}

TEST(GreedySearchTest, PairsRunOutBeforeTheTargetWhenTooFewAreAccepted) {
  // Only pairs with j == 0 are acceptable, target 3 of 3: reached exactly at the end...
  const LayerDistances d = Matrix(4, {{1, 0, 1}, {2, 0, 2}, {3, 0, 3}});
  FakeEvaluator only_layer0([](int, int j) { return j == 0 ? 0.9 : 0.0; });
  auto r = GreedySearch(d, Options(3), only_layer0);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stop, StopReason::kTargetReached);
  // ... while only pair (3, 0) acceptable leaves the target unmet.
  FakeEvaluator one_pair([](int i, int j) { return i == 3 && j == 0 ? 0.9 : 0.0; });
  r = GreedySearch(d, Options(3), one_pair);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stop, StopReason::kPairsExhausted);
  EXPECT_EQ(r->accepted, 1);
  EXPECT_EQ(r->pairs_skipped, 2);  // (3, 1) and (3, 2) after (3, 0) was accepted
  EXPECT_THAT(r->kv_source, ElementsAre(0, 1, 2, 0));
}

TEST(GreedySearchTest, ANegativeThresholdAcceptsAnticorrelatedCandidates) {
  const LayerDistances d = Matrix(3, {{2, 0, 1}});
  FakeEvaluator fake([](int, int) { return -0.2; });
  auto r = GreedySearch(d, Options(1, -0.5), fake);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->accepted, 1);
}

TEST(GreedySearchTest, EvaluatorErrorsAbortTheSearch) {
  const LayerDistances d = Matrix(3, {});
  FakeEvaluator fake([](int, int) { return 0.9; });
  fake.fail_after_ = 0;
  auto r = GreedySearch(d, Options(1), fake);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInternal);
}

TEST(GreedySearchTest, ProgressSeesEveryScoredPairWithTheAcceptanceCount) {
  const LayerDistances d = Matrix(4, {{3, 0, 9}, {3, 1, 8}, {2, 1, 7}});
  FakeEvaluator fake([](int, int) { return 0.9; });
  std::vector<std::tuple<int, int, int, int>> seen;  // pair index, i, j, accepted so far
  auto r = GreedySearch(d, Options(2), fake, [&](const GreedyProgress& p) {
    EXPECT_EQ(p.pairs_total, 6);
    EXPECT_EQ(p.target_layers, 2);
    seen.push_back({p.pair_index, p.pair.i, p.pair.j, p.accepted});
  });
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(seen, ElementsAre(std::tuple{0, 3, 0, 0}, std::tuple{2, 2, 1, 1}));
}

TEST(GreedySearchTest, ARunToKPassesThroughTheRunsToSmallerTargets) {
  // Deterministic pseudo-scores with rejections mixed in.
  LayerDistances d(8);
  std::mt19937 rng(3);
  for (int i = 1; i < 8; ++i) {
    for (int j = 0; j < i; ++j) d.Set(i, j, rng() % 1000, rng() % 1000);
  }
  auto score = [](int i, int j) { return ((i * 7 + j * 3) % 5) / 4.0; };
  FakeEvaluator big(score);
  auto full = GreedySearch(d, Options(5), big);
  ASSERT_TRUE(full.ok());
  ASSERT_EQ(full->accepted, 5);
  ASSERT_GT(full->trace.size(), 5u);  // some rejections on the way
  for (int k = 1; k <= 5; ++k) {
    FakeEvaluator small(score);
    auto partial = GreedySearch(d, Options(k), small);
    ASSERT_TRUE(partial.ok());
    auto prefix = StrategyAfterAccepts(full->trace, 8, k);
    ASSERT_TRUE(prefix.ok());
    EXPECT_EQ(*prefix, partial->kv_source) << "k " << k;
  }
  EXPECT_THAT(*StrategyAfterAccepts(full->trace, 8, 0), ElementsAre(0, 1, 2, 3, 4, 5, 6, 7));
  EXPECT_EQ(StrategyAfterAccepts(full->trace, 8, 6).status().code(), absl::StatusCode::kOutOfRange);
}

// GreedySearch is the readable reference; RunStrategySearch runs BestOfKSearch, whose K = 1
// (lazy or not) must make the same calls on the evaluator, report the same progress and
// return the same strategy and trace, whatever the order, target and rejections.
TEST(GreedySearchTest, BestOfOneSelectionMakesExactlyTheGreedyChoices) {
  LayerDistances d(7);
  std::mt19937 rng(11);
  for (int i = 1; i < 7; ++i) {
    for (int j = 0; j < i; ++j) d.Set(i, j, rng() % 100, rng() % 100);  // ties included
  }
  auto score = [](int i, int j) { return ((i * 5 + j * 3) % 7) / 6.0; };  // 0 .. 1, some equal
  using Progress = std::tuple<int, int, int, int, int, int, double, std::vector<int>>;
  auto progress_of = [](std::vector<Progress>* out) {
    return [out](const GreedyProgress& p) {
      out->push_back({p.pair_index, p.pair.i, p.pair.j, p.accepted, p.sharing_layers,
                      p.pairs_scored, p.score, p.kv_source});
    };
  };
  int rejections = 0, skips = 0, exhausted = 0;
  for (PairOrder order : {PairOrder::kDissimilar, PairOrder::kSimilar, PairOrder::kRandom}) {
    for (int target = 1; target <= 6; ++target) {
      for (double threshold : {0.3, 0.5, 0.99}) {
        GreedyOptions o = Options(target, threshold);
        o.order = order;
        o.seed = 5;
        FakeEvaluator reference(score);
        std::vector<Progress> reference_progress;
        auto greedy = GreedySearch(d, o, reference, progress_of(&reference_progress));
        ASSERT_TRUE(greedy.ok()) << greedy.status();
        for (bool lazy : {false, true}) {
          FakeEvaluator fake(score);
          std::vector<Progress> progress;
          auto best1 = BestOfKSearch(d, o, {1, lazy}, fake, progress_of(&progress));
          ASSERT_TRUE(best1.ok()) << best1.status();
          SCOPED_TRACE(absl::StrFormat("%s target %d threshold %g lazy %d", PairOrderName(order),
                                       target, threshold, lazy));
          testing::ExpectSameSearch(*greedy, best1->greedy);
          ASSERT_EQ(fake.calls_.size(), reference.calls_.size());
          for (size_t k = 0; k < fake.calls_.size(); ++k) {
            EXPECT_EQ(std::tie(fake.calls_[k].kv_source, fake.calls_[k].first_changed,
                               fake.calls_[k].accept),
                      std::tie(reference.calls_[k].kv_source, reference.calls_[k].first_changed,
                               reference.calls_[k].accept))
                << "call " << k;
          }
          EXPECT_EQ(progress, reference_progress);
        }
        rejections += greedy->trace.size() - greedy->accepted;
        skips += greedy->pairs_skipped;
        exhausted += greedy->stop == StopReason::kPairsExhausted;
      }
    }
  }
  // The table covers rejections, skipped pairs and both stop reasons.
  EXPECT_GT(rejections, 0);
  EXPECT_GT(skips, 0);
  EXPECT_GT(exhausted, 0);
}

TEST(GreedySearchTest, BadOptionsAreRejectedNamingValueAndLimit) {
  const LayerDistances d(5);
  FakeEvaluator fake([](int, int) { return 1.0; });
  struct Case {
    int target;
    double threshold;
    std::string message;
  };
  for (const Case& c : std::vector<Case>{
           {0, 0.5, "target layers 0 must be in [1, 4]"},
           {5, 0.5, "target layers 5 must be in [1, 4]"},
           {2, -1.0, "threshold -1 must be in (-1, 1]"},
           {2, 1.01, "threshold 1.01 must be in (-1, 1]"},
           {2, std::nan(""), "threshold nan must be in (-1, 1]"},
       }) {
    auto r = GreedySearch(d, Options(c.target, c.threshold), fake);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.message));
  }
  EXPECT_TRUE(fake.calls_.empty());
  EXPECT_TRUE(GreedySearch(d, Options(4, 1.0), fake).ok());
}

TEST(ParsePairOrderTest, NamesRoundTripAndUnknownOnesAreErrors) {
  for (PairOrder o : {PairOrder::kDissimilar, PairOrder::kSimilar, PairOrder::kRandom}) {
    EXPECT_EQ(*ParsePairOrder(PairOrderName(o)), o);
  }
  EXPECT_THAT(std::string(ParsePairOrder("cosine").status().message()), HasSubstr("'cosine'"));
}

}  // namespace
}  // namespace kvshare
