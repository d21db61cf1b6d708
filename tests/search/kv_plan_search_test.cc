// The KV plan search's rules (search_service/kv_plan_search.h) through a fake evaluator whose
// calibration NLL increase is additive over layers: the expected plans below are worked out by
// hand from the costs in each test.
#include "search_service/kv_plan_search.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <map>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvshare {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr KvType F16 = KvType::kF16, I8 = KvType::kInt8, I4 = KvType::kInt4;

// Geometry of one KV head of 32 channels, 16-token blocks: per layer and token f16 128 bytes,
// int8 68 (64 payload + 4 scale bytes), int4 44 (32 payload + 8 K scale/min over the block +
// 4 V scale/min).
KvGeometry Geometry() {
  KvGeometry g;
  g.block_tokens = 16;
  g.n_kv_heads = 1;
  g.head_dim = 32;
  return g;
}

// The rules below are pinned with two lower types (k4v3 needs 64-channel heads).
KvPlanOptions TwoTypes() {
  KvPlanOptions o;
  o.lower_types = {I8, I4};
  o.floor_types = {};
  return o;
}

// Increase = sum over owning layers of type_cost[layer][type] + share_cost[layer] over sharing
// layers.
class FakePlanEvaluator : public PlanEvaluator {
 public:
  std::map<std::pair<int, KvType>, double> type_cost;
  std::map<int, double> share_cost;
  int runs = 0;
  std::vector<double> reject_above;  // of every NllIncrease call
  KvPlan accepted;
  double Cost(const KvPlan& p) const {
    double c = 0;
    for (size_t l = 0; l < p.kv_source.size(); ++l) {
      if (p.kv_source[l] != int(l)) {
        auto it = share_cost.find(int(l));
        c += it == share_cost.end() ? 1.0 : it->second;
        continue;
      }
      auto it = type_cost.find({int(l), p.kv_types[l]});
      if (it != type_cost.end()) c += it->second;
    }
    return c;
  }
  absl::StatusOr<double> NllIncrease(const KvPlan& plan, int first, double above) override {
    ++runs;
    reject_above.push_back(above);
    if (!accepted.kv_source.empty()) {
      EXPECT_LE(first, FirstPlanDifference(plan, accepted)) << "first changed layer too late";
    }
    return Cost(plan);
  }
  absl::Status Accept(const KvPlan& plan, int) override {
    accepted = plan;
    return absl::OkStatus();
  }
};

HeldoutIncreaseFn Scaled(FakePlanEvaluator& e, double scale, std::vector<KvPlan>* seen = nullptr) {
  return [&e, scale, seen](const KvPlan& p, double) -> absl::StatusOr<double> {
    if (seen != nullptr) seen->push_back(p);
    return scale * e.Cost(p);
  };
}

// Held-out text where a shared layer costs 1.0 nat and an owning layer `precision_scale` times
// its calibration cost; `seen` records every plan checked.
HeldoutIncreaseFn SharesCostANat(FakePlanEvaluator& e, double precision_scale,
                                 std::vector<KvPlan>* seen) {
  return [&e, precision_scale, seen](const KvPlan& p, double) -> absl::StatusOr<double> {
    seen->push_back(p);
    double c = 0;
    for (size_t l = 0; l < p.kv_source.size(); ++l) {
      c += p.kv_source[l] != int(l) ? 1.0 : precision_scale * e.type_cost[{int(l), p.kv_types[l]}];
    }
    return c;
  };
}

// Four layers whose only close pair is (3, 2).
LayerDistances OnlyThreeAndTwoClose() {
  LayerDistances d(4);
  for (int i = 1; i < 4; ++i) {
    for (int j = 0; j < i; ++j) d.Set(i, j, 10.0, 10.0);
  }
  d.Set(3, 2, 1.0, 1.0);
  return d;
}

TEST(KvPlanBytes, ExactFromTheBlockLayouts) {
  const KvGeometry g = Geometry();
  EXPECT_DOUBLE_EQ(KvLayerBytesPerToken(g, F16), 128);
  EXPECT_DOUBLE_EQ(KvLayerBytesPerToken(g, I8), 68);
  EXPECT_DOUBLE_EQ(KvLayerBytesPerToken(g, I4), 44);
  KvPlan p{{0, 0, 2}, {F16, F16, I4}};
  EXPECT_DOUBLE_EQ(KvPlanBytesPerToken(g, p), 128 + 44);
  EXPECT_EQ(FirstPlanDifference(p, KvPlan{{0, 1, 2}, {F16, F16, I4}}), 1);
  EXPECT_EQ(FirstPlanDifference(p, KvPlan{{0, 0, 2}, {F16, I8, I8}}), 2);  // layer 1 shares
  EXPECT_EQ(FirstPlanDifference(p, p), 3);
}

// Budget 1%: ln(1.01) = 0.00995 nats. Int4 alone costs: layer 0 0.001, layer 1 0.02 (over
// the budget alone), layer 2 0.002, layer 3 0.004; int8 0.0001 everywhere (so int8 stays a step
// of its own: it costs less than int4 on every layer). Int8 steps save 60 bytes for 0.0001.
TEST(KvPlanSearch, SpendsTheBudgetOnTheMostBytesPerNat) {
  FakePlanEvaluator e;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I8}] = 0.0001;
  e.type_cost[{0, I4}] = 0.001;
  e.type_cost[{1, I4}] = 0.02;
  e.type_cost[{2, I4}] = 0.002;
  e.type_cost[{3, I4}] = 0.004;
  KvPlanOptions o = TwoTypes();
  o.floor_first = false;  // the scan of steps 2-3 and 6, not step 1b
  o.max_ppl_increase = 1.0;
  o.share = false;
  auto r = SearchKvPlan(Geometry(), 4, o, e, nullptr, Scaled(e, 1.0));
  ASSERT_TRUE(r.ok()) << r.status();
  // Every int8 step first (600000 bytes/nat), then int4 steps of 24 bytes (68 -> 44) at
  // 0.0009, 0.0019, 0.0039 and 0.0199 added: the first three fit (0.0004 + 0.0067 = 0.0071),
  // layer 1's does not.
  EXPECT_THAT(r->plan.kv_types, ElementsAre(I4, I8, I4, I4));
  EXPECT_THAT(r->plan.kv_source, ElementsAre(0, 1, 2, 3));
  EXPECT_NEAR(r->calibration_increase, 0.001 + 0.0001 + 0.002 + 0.004, 1e-12);
  EXPECT_DOUBLE_EQ(r->bytes_per_token, 44 + 68 + 44 + 44);
  EXPECT_DOUBLE_EQ(r->base_bytes_per_token, 4 * 128);
  EXPECT_EQ(r->trimmed_actions, 0);
  // Step 6 tries the step left out (layer 1's int4: 0.027 held-out) and keeps the plan.
  EXPECT_THAT(r->heldout_checks, ElementsAre(r->calibration_increase, 0.027));
  EXPECT_EQ(r->grown_actions, 0);
  // base + 4 layers x 2 types + the combined plan.
  EXPECT_EQ(r->calibration_runs, 1 + 8 + 1);
}

// Held-out text finds precision cheaper than calibration text does: step 6 adds what the
// calibration estimate left out, all at once when it fits, else the longest prefix that fits.
TEST(KvPlanSearch, GrowsOnHeldOutSlack) {
  FakePlanEvaluator e;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I4}] = 0.004;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I8}] = 0.004;  // dominated by int4
  KvPlanOptions o = TwoTypes();
  o.floor_first = false;     // the scan of steps 2-3 and 6, not step 1b
  o.max_ppl_increase = 1.0;  // 0.00995 nats: calibration takes 2 of the 4 int4 steps
  o.share = false;
  auto all = SearchKvPlan(Geometry(), 4, o, e, nullptr, Scaled(e, 0.5));
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(all->plan.kv_types, ElementsAre(I4, I4, I4, I4));
  EXPECT_EQ(all->grown_actions, 2);
  EXPECT_THAT(all->heldout_checks, ElementsAre(0.004, 0.008));
  EXPECT_DOUBLE_EQ(all->heldout_increase, 0.008);

  // At 0.75 x: all four (0.012) is over; bisection keeps three (0.009).
  auto some = SearchKvPlan(Geometry(), 4, o, e, nullptr, Scaled(e, 0.75));
  ASSERT_TRUE(some.ok()) << some.status();
  EXPECT_THAT(some->plan.kv_types, ElementsAre(I4, I4, I4, F16));
  EXPECT_EQ(some->grown_actions, 1);
  ASSERT_EQ(some->heldout_checks.size(), 3u);
  EXPECT_NEAR(some->heldout_checks[1], 0.012, 1e-12);
  EXPECT_NEAR(some->heldout_increase, 0.009, 1e-12);
}

TEST(KvPlanSearch, SkipsATypeWhenASmallerOneCostsNoMore) {
  FakePlanEvaluator e;
  e.type_cost[{0, I8}] = 0.003;  // int8 costs more than int4: go straight to int4
  e.type_cost[{0, I4}] = 0.002;
  KvPlanOptions o = TwoTypes();
  o.floor_first = false;  // the scan of steps 2-3 and 6, not step 1b
  o.share = false;
  auto r = SearchKvPlan(Geometry(), 1, o, e, nullptr, Scaled(e, 1.0));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->actions.size(), 1u);
  EXPECT_EQ(PlanActionString(r->actions[0]), "0:int4");
  EXPECT_DOUBLE_EQ(r->actions[0].bytes_saved, 128 - 44);
}

TEST(KvPlanSearch, TrimsOnHeldOutUntilTheBudgetHolds) {
  FakePlanEvaluator e;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I4}] = 0.002 * (l + 1);  // 0.002 .. 0.008
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I8}] = 0.01;             // dominated
  KvPlanOptions o = TwoTypes();
  o.floor_first = false;     // the scan of steps 2-3 and 6, not step 1b
  o.max_ppl_increase = 2.0;  // 0.0198 nats
  o.share = false;
  std::vector<KvPlan> seen;
  // Held-out costs three times the calibration figure.
  auto r = SearchKvPlan(Geometry(), 4, o, e, nullptr, Scaled(e, 3.0, &seen));
  ASSERT_TRUE(r.ok()) << r.status();
  // Calibration takes layers 0..3 in order of cost: 0.002+0.004+0.006 = 0.012 fits, +0.008 =
  // 0.020 does not, so 3 steps. Held-out 0.036 > 0.0198; ratio 3 -> target 0.0066: keep the
  // prefix costing 0.006 (2 steps), held-out 0.018 fits.
  // Step 6 then tries the steps not in the plan, layer 2's int4 (given back) and layer 3's
  // (never taken): both, 0.018 + 0.018 + 0.024, are over; the first alone, 0.036, too. The plan
  // stays.
  EXPECT_THAT(r->plan.kv_types, ElementsAre(I4, I4, F16, F16));
  EXPECT_EQ(r->trimmed_actions, 1);
  EXPECT_EQ(r->grown_actions, 0);
  ASSERT_EQ(r->heldout_checks.size(), 4u);
  EXPECT_NEAR(r->heldout_checks[0], 0.036, 1e-12);
  EXPECT_NEAR(r->heldout_checks[2], 0.060, 1e-12);
  EXPECT_NEAR(r->heldout_checks[3], 0.036, 1e-12);
  EXPECT_NEAR(r->heldout_increase, 0.018, 1e-12);
  EXPECT_LE(r->heldout_increase, o.budget_nats());
}

TEST(KvPlanSearch, FallsBackToTheBasePlanWhenNothingFits) {
  FakePlanEvaluator e;
  e.type_cost[{0, I4}] = 0.001;
  e.type_cost[{0, I8}] = 0.001;
  KvPlanOptions o = TwoTypes();
  o.floor_first = false;  // the scan of steps 2-3 and 6, not step 1b
  o.share = false;
  o.max_heldout_rounds = 1;
  // Held-out says every lowered plan is far over budget.
  std::vector<double> reject_above;
  HeldoutIncreaseFn heldout = [&](const KvPlan& p, double above) -> absl::StatusOr<double> {
    reject_above.push_back(above);
    return p.kv_types[0] == F16 ? 0.0 : 1.0;
  };
  auto r = SearchKvPlan(Geometry(), 1, o, e, nullptr, heldout);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->plan.kv_types, ElementsAre(F16));
  // The base plan, then step 6's one try of layer 0's int4.
  EXPECT_THAT(r->heldout_checks, ElementsAre(1.0, 0.0, 1.0));
  EXPECT_TRUE(r->actions.empty());
  // The last resort (the base plan) reads the whole slice: the result carries its figure.
  const double b = o.budget_nats(), inf = std::numeric_limits<double>::infinity();
  EXPECT_THAT(reject_above, ElementsAre(b, inf, b));
}

// Sharing after precision: distances make (2, 1) the most similar pair, then (3, 2), (1, 0).
TEST(KvPlanSearch, SharesWhileBudgetRemainsMostBytesPerNatFirst) {
  FakePlanEvaluator e;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I8}] = 0.0;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I4}] = 0.0;
  e.share_cost = {{1, 0.01}, {2, 0.03}, {3, 0.02}};
  LayerDistances d(4);
  for (int i = 1; i < 4; ++i) {
    for (int j = 0; j < i; ++j) d.Set(i, j, 10.0, 10.0);
  }
  d.Set(2, 1, 1.0, 1.0);
  d.Set(3, 2, 2.0, 2.0);
  d.Set(1, 0, 3.0, 3.0);
  KvPlanOptions o = TwoTypes();
  o.max_ppl_increase = 5.0;  // 0.0488 nats
  o.share_best_of = 3;
  auto r = SearchKvPlan(Geometry(), 4, o, e, &d, Scaled(e, 1.0));
  ASSERT_TRUE(r.ok()) << r.status();
  // All int4 for free; step 1 scores (2,1) 0.03, (3,2) 0.02, (1,0) 0.01: all fit, each saves
  // 44 bytes, (1,0) is cheapest. Step 2 scores (2,1): layer 2 reads root(1) = 0, 0.04 total;
  // (3,2): 0.03; (2,0) next in order (distance 10): 0.04. (3,2) wins. Step 3: (2,1) 0.06 and
  // (2,0) 0.06 exceed the budget, and every other pair's i shares: sharing ends.
  ASSERT_EQ(r->actions.size(), 4u + 2u);
  EXPECT_EQ(PlanActionString(r->actions[4]), "1->0");
  EXPECT_EQ(PlanActionString(r->actions[5]), "3->2");
  EXPECT_THAT(r->plan.kv_source, ElementsAre(0, 0, 2, 2));
  EXPECT_THAT(r->plan.kv_types, ElementsAre(I4, I4, I4, I4));
  EXPECT_NEAR(r->calibration_increase, 0.03, 1e-12);
  EXPECT_DOUBLE_EQ(r->bytes_per_token, 2 * 44);
  // Only the 8 sharing candidates may stop early (at the budget); the floor is scored on every
  // sample (and the base plan not at all: the floor fits).
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> want = {inf};
  want.resize(1 + 8, o.budget_nats());
  EXPECT_EQ(e.reject_above, want);
}

// Calibration text takes a share that held-out text finds expensive: step 5 gives back more
// than the share (its guess scales every action by one ratio), and step 6 grows the precision
// back on the held-out slack. A larger budget must not end in a worse plan than this.
TEST(KvPlanSearch, AfterGivingASharedLayerBackItGrowsPrecisionOnTheSlack) {
  FakePlanEvaluator e;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I4}] = 0.004;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I8}] = 0.004;  // dominated by int4
  e.share_cost = {{3, 0.001}};                               // any other share: 1.0
  const LayerDistances d = OnlyThreeAndTwoClose();
  KvPlanOptions o = TwoTypes();
  o.floor_first = false;     // the scan of steps 2-3 and 6, not step 1b
  o.max_ppl_increase = 1.0;  // 0.00995 nats
  o.share_best_of = 1;
  // Held-out: precision at half its calibration cost, a shared layer at 1.0.
  std::vector<KvPlan> seen;
  auto r = SearchKvPlan(Geometry(), 4, o, e, &d, SharesCostANat(e, 0.5, &seen));
  ASSERT_TRUE(r.ok()) << r.status();
  // Calibration: int4 on layers 0 and 1 (0.008), then 3 reads 2 (0.009). Held-out 1.004 is
  // over; the ratio (111x) leaves a prefix of nothing: the base plan (0). Step 6: all four
  // int4 steps, 0.008 held-out, fit.
  ASSERT_GE(seen.size(), 3u);
  EXPECT_THAT(seen[0].kv_source, ElementsAre(0, 1, 2, 2));
  EXPECT_EQ(r->trimmed_actions, 3);
  EXPECT_EQ(r->grown_actions, 4);
  EXPECT_THAT(r->plan.kv_source, ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(r->plan.kv_types, ElementsAre(I4, I4, I4, I4));
  EXPECT_NEAR(r->heldout_increase, 0.008, 1e-12);
}

// Step 1b: the floor (every layer at int4) fits the budget on held-out text, so it is the
// precision plan without a sensitivity scan: one held-out check, one calibration run.
TEST(KvPlanSearch, AFloorThatFitsSkipsTheScan) {
  FakePlanEvaluator e;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I8}] = 0.0001;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I4}] = 0.001;
  KvPlanOptions o = TwoTypes();
  o.max_ppl_increase = 1.0;  // 0.00995 nats; the floor costs 0.004
  o.share = false;
  std::vector<KvPlan> seen;
  auto r = SearchKvPlan(Geometry(), 4, o, e, nullptr, Scaled(e, 1.0, &seen));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->plan.kv_types, ElementsAre(I4, I4, I4, I4));
  ASSERT_EQ(r->actions.size(), 4u);
  EXPECT_EQ(PlanActionString(r->actions[3]), "3:int4");
  EXPECT_DOUBLE_EQ(r->actions[0].bytes_saved, 128 - 44);
  EXPECT_NEAR(r->actions[0].cost, 0.001, 1e-12);  // the floor's cost, shared evenly
  EXPECT_EQ(r->calibration_runs, 1);              // the floor only: the base plan is not scored
  EXPECT_EQ(seen.size(), 1u);                     // step 5 reuses the floor's check
  EXPECT_THAT(r->heldout_checks, ElementsAre(0.004));
  EXPECT_NEAR(r->calibration_increase, 0.004, 1e-12);
  EXPECT_EQ(r->grown_actions, 0);
  EXPECT_EQ(r->trimmed_actions, 0);
}

// A floor over the budget costs one held-out check; the scan then finds what it found without
// step 1b (SpendsTheBudgetOnTheMostBytesPerNat's costs and plan).
TEST(KvPlanSearch, AFloorOverTheBudgetCostsOneCheck) {
  FakePlanEvaluator e;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I8}] = 0.0001;
  e.type_cost[{0, I4}] = 0.001;
  e.type_cost[{1, I4}] = 0.02;
  e.type_cost[{2, I4}] = 0.002;
  e.type_cost[{3, I4}] = 0.004;
  KvPlanOptions o = TwoTypes();
  o.max_ppl_increase = 1.0;
  o.share = false;
  auto r = SearchKvPlan(Geometry(), 4, o, e, nullptr, Scaled(e, 1.0));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->plan.kv_types, ElementsAre(I4, I8, I4, I4));
  ASSERT_EQ(r->heldout_checks.size(), 3u);
  EXPECT_NEAR(r->heldout_checks[0], 0.027, 1e-12);  // the floor
  EXPECT_EQ(r->calibration_runs, 1 + 8 + 1);
}

// Held-out checks may stop early at the budget (a stop only rejects), and with early_reject =
// false every check reads the whole slice.
TEST(KvPlanSearch, HeldOutChecksMayStopEarlyAtTheBudget) {
  FakePlanEvaluator e;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I8}] = 0.0001;
  e.type_cost[{0, I4}] = 0.001;
  e.type_cost[{1, I4}] = 0.02;
  e.type_cost[{2, I4}] = 0.002;
  e.type_cost[{3, I4}] = 0.004;
  for (bool early : {true, false}) {
    KvPlanOptions o = TwoTypes();
    o.max_ppl_increase = 1.0;
    o.share = false;
    o.early_reject = early;
    std::vector<double> reject_above;
    HeldoutIncreaseFn heldout = [&](const KvPlan& p, double above) -> absl::StatusOr<double> {
      reject_above.push_back(above);
      return e.Cost(p);
    };
    auto r = SearchKvPlan(Geometry(), 4, o, e, nullptr, heldout);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_THAT(r->plan.kv_types, ElementsAre(I4, I8, I4, I4));  // as AFloorOverTheBudget...
    const double inf = std::numeric_limits<double>::infinity();
    // The floor, the trim's check of the precision plan, step 6's growth check.
    const double b = early ? o.budget_nats() : inf;
    EXPECT_THAT(reject_above, ElementsAre(b, b, b)) << early;
  }
}

// Sharing on top of a floor that fits: held-out text finds the share too expensive, and step 5
// gives it back down to the floor, not below (the floor was measured within the budget).
TEST(KvPlanSearch, TrimNeverGoesBelowAFloorThatFits) {
  FakePlanEvaluator e;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I4}] = 0.001;
  e.share_cost = {{3, 0.001}};  // any other share: 1.0
  const LayerDistances d = OnlyThreeAndTwoClose();
  KvPlanOptions o = TwoTypes();
  o.max_ppl_increase = 1.0;
  o.share_best_of = 1;
  std::vector<KvPlan> seen;
  auto r = SearchKvPlan(Geometry(), 4, o, e, &d, SharesCostANat(e, 1.0, &seen));
  ASSERT_TRUE(r.ok()) << r.status();
  // Checks: the floor (0.004), the floor with 3 reading 2 (1.003); the trim's guess keeps the
  // floor, measured already.
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_THAT(seen[1].kv_source, ElementsAre(0, 1, 2, 2));
  EXPECT_EQ(r->trimmed_actions, 1);
  EXPECT_THAT(r->plan.kv_source, ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(r->plan.kv_types, ElementsAre(I4, I4, I4, I4));
  EXPECT_NEAR(r->heldout_increase, 0.004, 1e-12);
}

// After a floor that fits, shares are priced on top of its held-out figure: here the floor
// costs 0.004 nats on calibration and three times that on held-out text, and the share of
// layer 3 costs 0.009 on calibration — within the 2% budget (0.0198) on calibration (0.013),
// not on top of the floor's held-out 0.012 (0.021). It is dropped without a held-out check.
TEST(KvPlanSearch, SharesArePricedOnTopOfTheFloorsHeldOutCost) {
  FakePlanEvaluator e;
  for (int l = 0; l < 4; ++l) e.type_cost[{l, I4}] = 0.001;
  e.share_cost = {{3, 0.009}};  // any other share: 1.0
  const LayerDistances d = OnlyThreeAndTwoClose();
  KvPlanOptions o = TwoTypes();
  o.max_ppl_increase = 2.0;
  o.share_best_of = 1;
  std::vector<KvPlan> seen;
  auto r = SearchKvPlan(Geometry(), 4, o, e, &d, SharesCostANat(e, 3.0, &seen));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(seen.size(), 1u);  // the floor
  EXPECT_THAT(r->plan.kv_source, ElementsAre(0, 1, 2, 3));
  EXPECT_THAT(r->plan.kv_types, ElementsAre(I4, I4, I4, I4));
  EXPECT_NEAR(r->heldout_increase, 0.012, 1e-12);
  EXPECT_EQ(r->trimmed_actions, 0);
  // The candidate was scored against the lowered budget, 0.0198 - (0.012 - 0.004).
  EXPECT_NEAR(e.reject_above.back(), o.budget_nats() - 0.008, 1e-12);
}

TEST(KvPlanSearch, RejectsBadOptionsNamingTheField) {
  FakePlanEvaluator e;
  KvPlanOptions o = TwoTypes();
  o.max_ppl_increase = 0;
  auto r = SearchKvPlan(Geometry(), 2, o, e, nullptr, Scaled(e, 1.0));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("--max-ppl-increase 0"));
  o.max_ppl_increase = NAN;
  EXPECT_THAT(ValidateKvPlanOptions(o, false).message(), HasSubstr("max_ppl_increase nan"));
  o.max_ppl_increase = 2;
  o.lower_types = {KvType::kF32};
  EXPECT_THAT(ValidateKvPlanOptions(o).message(), HasSubstr("lower type f32"));
  o.lower_types = {I4};
  o.share_best_of = 0;
  EXPECT_THAT(ValidateKvPlanOptions(o).message(), HasSubstr("--best-of 0"));
}

TEST(KvPlanSearch, AnInt4PlanNeedsCalibrationSamplesOfTwoBlocks) {
  KvPlanOptions o = TwoTypes();
  o.block_tokens = 64;
  EXPECT_TRUE(CheckPlanCalibration(o, 128).ok());
  absl::Status s = CheckPlanCalibration(o, 64);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("--tokens 64 must be >= 2 x --block-tokens 64"));
  EXPECT_THAT(CheckPlanCalibration(o, 64, false).message(),
              HasSubstr("tokens 64 must be >= 2 x kv_block_tokens 64"));
  o.lower_types = {I8};  // int8 quantises every position: any length shows its cost
  EXPECT_TRUE(CheckPlanCalibration(o, 16).ok());
}

TEST(KvPlanSearch, CancelStopsBeforeTheNextForward) {
  FakePlanEvaluator e;
  std::atomic<bool> cancel{true};
  KvPlanHooks hooks;
  hooks.cancel = &cancel;
  auto r = SearchKvPlan(Geometry(), 3, TwoTypes(), e, nullptr, Scaled(e, 1.0), hooks);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(e.runs, 0);
}

TEST(KvPlanSearch, RefusesATypeTheHeadsCannotHold) {
  FakePlanEvaluator e;
  auto r = SearchKvPlan(Geometry(), 3, KvPlanOptions{}, e, nullptr, Scaled(e, 1.0));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("k4v3 needs head_dim a multiple of 64"));
  EXPECT_EQ(e.runs, 0);
}

// The default options: int8 and int4 per layer, k4v3 only as a floor tried first, int4a only as
// a floor tried after int4. Heads of 64 channels (k4v3's V groups).
TEST(KvPlanSearch, TriesTheFloorsButNeverLowersOneLayerToThem) {
  KvGeometry g = Geometry();
  g.head_dim = 64;
  const KvType K4V3 = KvType::kK4V3, I4A = KvType::kInt4A;
  auto run = [&](double percent, double int4a_cost) {
    FakePlanEvaluator e;
    for (int l = 0; l < 3; ++l) {
      e.type_cost[{l, I8}] = 0.0001;
      e.type_cost[{l, I4}] = 0.001;
      e.type_cost[{l, K4V3}] = 0.004;
      e.type_cost[{l, I4A}] = int4a_cost;
    }
    KvPlanOptions o;
    o.max_ppl_increase = percent;
    o.share = false;
    auto r = SearchKvPlan(g, 3, o, e, nullptr, Scaled(e, 1.0));
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : KvPlanSearchResult{};
  };
  // int4a stores a few bytes more than int4, fewer than int4 with one layer at int8.
  ASSERT_GT(KvLayerBytesPerToken(g, I4A), KvLayerBytesPerToken(g, I4));
  ASSERT_LT(KvLayerBytesPerToken(g, I4A),
            KvLayerBytesPerToken(g, I4) +
                (KvLayerBytesPerToken(g, I8) - KvLayerBytesPerToken(g, I4)) / 3);
  // 1.5%: 0.0149 nats hold the k4v3 floor (0.012); nothing else is measured on held-out.
  KvPlanSearchResult r = run(1.5, 0.0005);
  EXPECT_THAT(r.plan.kv_types, ElementsAre(K4V3, K4V3, K4V3));
  EXPECT_THAT(r.heldout_checks, ElementsAre(0.012));
  // 0.5% (0.00499): k4v3's floor is over, int4's (0.003) fits and is the plan.
  r = run(0.5, 0.0005);
  EXPECT_THAT(r.plan.kv_types, ElementsAre(I4, I4, I4));
  EXPECT_THAT(r.heldout_checks, ElementsAre(0.012, 0.003));
  // 0.2% (0.002): int4's floor is over too, int4a's (0.0015) fits.
  r = run(0.2, 0.0005);
  EXPECT_THAT(r.plan.kv_types, ElementsAre(I4A, I4A, I4A));
  EXPECT_THAT(r.heldout_checks, ElementsAre(0.012, 0.003, 0.0015));
  // Every floor over (int4a 0.0045): the scan lowers layers to int8 and int4 only.
  r = run(0.2, 0.0015);
  EXPECT_DOUBLE_EQ(r.heldout_checks.size() >= 3 ? r.heldout_checks[2] : 0, 0.0045);
  EXPECT_THAT(r.plan.kv_types, ::testing::Not(::testing::Contains(K4V3)));
  EXPECT_THAT(r.plan.kv_types, ::testing::Not(::testing::Contains(I4A)));
  EXPECT_THAT(r.plan.kv_types, ::testing::Contains(I4));
  EXPECT_LE(r.heldout_increase, std::log1p(0.002));
}

}  // namespace
}  // namespace kvshare
