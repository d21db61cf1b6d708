// The baseline sharing patterns (search_service/baseline_strategies.h), written out by hand
// for the models of the quality table (30 and 5 layers), their limits, and that every one is a
// valid strategy with exactly the asked number of sharing layers.
#include "search_service/baseline_strategies.h"

#include <map>

#include "common/strategy/sharing_strategy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

// kv_source of L layers from {layer: source} entries; other layers own.
std::vector<int> Sources(int n_layers, const std::map<int, int>& shares) {
  std::vector<int> kv(n_layers);
  for (int l = 0; l < n_layers; ++l) kv[l] = l;
  for (auto [l, s] : shares) kv[l] = s;
  return kv;
}

std::vector<int> Make(BaselinePattern p, int n_layers, int shared, int group_size = 3) {
  BaselineOptions o;
  o.group_size = group_size;
  auto kv = BaselineStrategy(p, n_layers, shared, o);
  EXPECT_TRUE(kv.ok()) << kv.status();
  return kv.ok() ? *kv : std::vector<int>{};
}

TEST(BaselineStrategyTest, AlternateSpreadsOddLayersReadingTheLayerBelowOverTheDepth) {
  EXPECT_EQ(Make(BaselinePattern::kAlternate, 30, 4),
            Sources(30, {{3, 2}, {11, 10}, {19, 18}, {27, 26}}));
  EXPECT_EQ(
      Make(BaselinePattern::kAlternate, 30, 8),
      Sources(30, {{1, 0}, {5, 4}, {9, 8}, {13, 12}, {17, 16}, {21, 20}, {25, 24}, {29, 28}}));
  EXPECT_EQ(Make(BaselinePattern::kAlternate, 30, 12), Sources(30, {{1, 0},
                                                                    {3, 2},
                                                                    {7, 6},
                                                                    {9, 8},
                                                                    {11, 10},
                                                                    {13, 12},
                                                                    {17, 16},
                                                                    {19, 18},
                                                                    {21, 20},
                                                                    {23, 22},
                                                                    {27, 26},
                                                                    {29, 28}}));
  // All odd layers: CLA with factor 2 over the whole model.
  std::map<int, int> all;
  for (int l = 1; l < 30; l += 2) all[l] = l - 1;
  EXPECT_EQ(Make(BaselinePattern::kAlternate, 30, 15), Sources(30, all));
  EXPECT_EQ(Make(BaselinePattern::kAlternate, 5, 1), Sources(5, {{3, 2}}));
  EXPECT_EQ(Make(BaselinePattern::kAlternate, 5, 2), Sources(5, {{1, 0}, {3, 2}}));
}

TEST(BaselineStrategyTest, GroupsShareTheirLowestLayerFromTheTopDown) {
  EXPECT_EQ(Make(BaselinePattern::kGroups, 30, 4),
            Sources(30, {{28, 27}, {29, 27}, {25, 24}, {26, 24}}));
  EXPECT_EQ(
      Make(BaselinePattern::kGroups, 30, 8),
      Sources(30,
              {{28, 27}, {29, 27}, {25, 24}, {26, 24}, {22, 21}, {23, 21}, {19, 18}, {20, 18}}));
  EXPECT_EQ(Make(BaselinePattern::kGroups, 30, 12), Sources(30, {{28, 27},
                                                                 {29, 27},
                                                                 {25, 24},
                                                                 {26, 24},
                                                                 {22, 21},
                                                                 {23, 21},
                                                                 {19, 18},
                                                                 {20, 18},
                                                                 {16, 15},
                                                                 {17, 15},
                                                                 {13, 12},
                                                                 {14, 12}}));
  // A partial group takes the layers just above its lowest one.
  EXPECT_EQ(Make(BaselinePattern::kGroups, 30, 3), Sources(30, {{28, 27}, {29, 27}, {25, 24}}));
  EXPECT_EQ(Make(BaselinePattern::kGroups, 30, 6, 4),
            Sources(30, {{27, 26}, {28, 26}, {29, 26}, {23, 22}, {24, 22}, {25, 22}}));
  EXPECT_EQ(Make(BaselinePattern::kGroups, 5, 1), Sources(5, {{3, 2}}));
  EXPECT_EQ(Make(BaselinePattern::kGroups, 5, 2), Sources(5, {{3, 2}, {4, 2}}));
  // The bottom group is clipped at layer 0: [0, 1] shares layer 0.
  EXPECT_EQ(Make(BaselinePattern::kGroups, 5, 3), Sources(5, {{3, 2}, {4, 2}, {1, 0}}));
}

TEST(BaselineStrategyTest, MiddleHasTheTopLayersReadTheHighestOwner) {
  EXPECT_EQ(Make(BaselinePattern::kMiddle, 30, 4),
            Sources(30, {{26, 25}, {27, 25}, {28, 25}, {29, 25}}));
  std::map<int, int> top8, top12, half;
  for (int l = 22; l < 30; ++l) top8[l] = 21;
  for (int l = 18; l < 30; ++l) top12[l] = 17;
  for (int l = 15; l < 30; ++l) half[l] = 14;  // YOCO: the upper half reads the middle layer
  EXPECT_EQ(Make(BaselinePattern::kMiddle, 30, 8), Sources(30, top8));
  EXPECT_EQ(Make(BaselinePattern::kMiddle, 30, 12), Sources(30, top12));
  EXPECT_EQ(Make(BaselinePattern::kMiddle, 30, 15), Sources(30, half));
  EXPECT_EQ(Make(BaselinePattern::kMiddle, 5, 1), Sources(5, {{4, 3}}));
  EXPECT_EQ(Make(BaselinePattern::kMiddle, 5, 2), Sources(5, {{3, 2}, {4, 2}}));
}

TEST(BaselineStrategyTest, MiniCachePairsTheDeepestLayers) {
  EXPECT_EQ(Make(BaselinePattern::kMiniCache, 30, 4),
            Sources(30, {{23, 22}, {25, 24}, {27, 26}, {29, 28}}));
  std::map<int, int> eight, twelve;
  for (int l = 14; l < 30; l += 2) eight[l + 1] = l;
  for (int l = 6; l < 30; l += 2) twelve[l + 1] = l;
  EXPECT_EQ(Make(BaselinePattern::kMiniCache, 30, 8), Sources(30, eight));
  EXPECT_EQ(Make(BaselinePattern::kMiniCache, 30, 12), Sources(30, twelve));
  EXPECT_EQ(Make(BaselinePattern::kMiniCache, 5, 1), Sources(5, {{4, 3}}));
  EXPECT_EQ(Make(BaselinePattern::kMiniCache, 5, 2), Sources(5, {{2, 1}, {4, 3}}));
}

TEST(BaselineStrategyTest, EveryPatternGivesAValidStrategyWithExactlyTheAskedSharing) {
  for (int L : {2, 3, 5, 8, 30, 32}) {
    for (BaselinePattern p : AllBaselinePatterns()) {
      for (int k = 1; k < L; ++k) {
        auto kv = BaselineStrategy(p, L, k);
        if (!kv.ok()) {
          // Past the pattern's limit: every larger k fails too.
          EXPECT_EQ(kv.status().code(), absl::StatusCode::kInvalidArgument);
          for (int more = k + 1; more < L; ++more) EXPECT_FALSE(BaselineStrategy(p, L, more).ok());
          break;
        }
        auto st = SharingStrategy::Create(*kv, "fp");
        ASSERT_TRUE(st.ok()) << BaselinePatternName(p) << " L " << L << " k " << k << ": "
                             << st.status();
        EXPECT_EQ(st->sharing_layers(), k) << BaselinePatternName(p) << " L " << L;
      }
    }
  }
}

TEST(BaselineStrategyTest, LimitsAndBadArgumentsNameThePatternAndTheLimit) {
  auto r = BaselineStrategy(BaselinePattern::kAlternate, 30, 16);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("--baseline alternate cannot share 16 of 30 layers: at most 15"));
  r = BaselineStrategy(BaselinePattern::kMiniCache, 30, 15);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("at most 14"));
  r = BaselineStrategy(BaselinePattern::kGroups, 30, 21);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("at most 20"));
  EXPECT_TRUE(BaselineStrategy(BaselinePattern::kGroups, 30, 20).ok());
  EXPECT_TRUE(BaselineStrategy(BaselinePattern::kMiddle, 30, 29).ok());
  for (int bad : {0, -1, 30}) {
    r = BaselineStrategy(BaselinePattern::kMiddle, 30, bad);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(r.status().message(), HasSubstr("must be in [1, 29]"));
  }
  BaselineOptions o;
  o.group_size = 1;
  r = BaselineStrategy(BaselinePattern::kGroups, 30, 4, o);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("--group-size 1 must be >= 2"));
  auto p = ParseBaselinePattern("cla");
  ASSERT_FALSE(p.ok());
  EXPECT_THAT(p.status().message(),
              HasSubstr("--baseline 'cla' is not one of alternate, groups, middle, minicache"));
  for (BaselinePattern q : AllBaselinePatterns()) {
    EXPECT_EQ(*ParseBaselinePattern(BaselinePatternName(q)), q);
  }
}

}  // namespace
}  // namespace kvshare
