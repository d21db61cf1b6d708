// Gemma 3's local/global sharing rule (docs/METHOD.md §1, ModelConfig::CanReadCacheOf): a
// strategy where a global layer reads a local cache, or (with different RoPE bases) a local
// layer reads a global one, is refused when bound to the model, naming the layer; the search
// never proposes such a pair; a model without windows (Llama) is unaffected.
#include <string>
#include <vector>

#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "search_service/greedy_search.h"
#include "search_service/layer_distance.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

constexpr char kFingerprint[] = "f00d";

// Six layers: 0-4 local (window 4), 5 global; Gemma 3's two RoPE bases unless told.
ModelConfig Config(float local_theta = 1e4f) {
  ModelConfig c;
  c.architecture = "gemma3";
  c.name = "toy-gemma";
  c.n_layers = 6;
  c.sliding_window = 4;
  c.local_layer = {1, 1, 1, 1, 1, 0};
  c.rope_theta = 1e6f;
  c.rope_theta_local = local_theta;
  return c;
}

absl::Status Bind(const std::vector<int>& kv_source, const ModelConfig& c) {
  auto s = SharingStrategy::Create(kv_source, kFingerprint);
  if (!s.ok()) return s.status();
  return s->ValidateFor(c, kFingerprint);
}

TEST(LocalGlobalRuleTest, LayersOfTheSameKindMayShare) {
  EXPECT_TRUE(Bind({0, 0, 2, 2, 0, 5}, Config()).ok());
}

TEST(LocalGlobalRuleTest, AGlobalLayerMayNotReadALocalCache) {
  const absl::Status s = Bind({0, 1, 2, 3, 4, 4}, Config());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("layer 5 (global) reads layer 4's cache (local)"));
  // Whatever the RoPE bases: a windowed cache may drop what a global layer needs.
  EXPECT_FALSE(Bind({0, 1, 2, 3, 4, 4}, Config(/*local_theta=*/1e6f)).ok());
}

TEST(LocalGlobalRuleTest, ALocalLayerReadsAGlobalCacheOnlyWithTheSameRopeBase) {
  ModelConfig c = Config();
  c.n_layers = 7;
  c.local_layer = {1, 1, 1, 1, 1, 0, 1};
  const absl::Status s = Bind({0, 1, 2, 3, 4, 5, 5}, c);
  EXPECT_THAT(s.message(), HasSubstr("layer 6 (local) reads layer 5's cache (global)"));
  c.rope_theta_local = c.rope_theta;
  EXPECT_TRUE(Bind({0, 1, 2, 3, 4, 5, 5}, c).ok());
}

TEST(LocalGlobalRuleTest, ModelsWithoutWindowsAllowEveryPair) {
  ModelConfig c;
  c.n_layers = 6;
  EXPECT_TRUE(Bind({0, 1, 2, 3, 4, 4}, c).ok());
  EXPECT_TRUE(c.CanReadCacheOf(5, 0));
}

TEST(LocalGlobalRuleTest, TheSearchNeverProposesAForbiddenPair) {
  const ModelConfig c = Config();
  LayerDistances d(6);
  for (int i = 1; i < 6; ++i) {
    for (int j = 0; j < i; ++j) d.Set(i, j, 0.1 * i + 0.01 * j, 0.2);
  }
  const size_t all = OrderPairs(d, PairOrder::kDissimilar, 0).size();
  EXPECT_EQ(all, 15u);
  for (int i = 1; i < 6; ++i) {
    for (int j = 0; j < i; ++j) {
      if (!c.CanReadCacheOf(i, j)) d.Forbid(i, j);
    }
  }
  for (PairOrder order : {PairOrder::kDissimilar, PairOrder::kSimilar, PairOrder::kRandom}) {
    const std::vector<LayerPair> pairs = OrderPairs(d, order, 3);
    EXPECT_EQ(pairs.size(), 10u);  // the five pairs (5, j < 5) are gone
    for (const LayerPair& p : pairs) EXPECT_TRUE(c.CanReadCacheOf(p.i, p.j)) << p.i << "," << p.j;
  }
}

}  // namespace
}  // namespace kvshare
