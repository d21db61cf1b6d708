// The quality gate's rules (search_service/server/quality_gate.h), the catalog's quality budget
// (model_catalog.h) and the probe comparison (rollout_policy.h, ProbeDisagreement), as pure
// functions. Expected figures are computed by hand: 27.4 -> 30.0 is +9.489%.
#include "search_service/server/quality_gate.h"

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "common/engine/quality_probe.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "search_service/server/model_catalog.h"
#include "search_service/server/rollout_policy.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

const std::string kFingerprint(64, 'a');

StrategyRecord Record(double baseline_ppl, double heldout_ppl, int64_t tokens = 16384) {
  auto s = SharingStrategy::Create({0, 0, 2, 3}, kFingerprint);
  EXPECT_TRUE(s.ok());
  s->provenance().baseline_ppl = baseline_ppl;
  s->provenance().heldout_ppl = heldout_ppl;
  s->provenance().heldout_tokens = tokens;
  StrategyRecord r;
  r.model_fingerprint = kFingerprint;
  r.model_name = "smollm2";
  r.version = 3;
  r.strategy = std::make_shared<const SharingStrategy>(std::move(*s));
  return r;
}

TEST(QualityGateTest, AVersionPastTheBudgetIsRefusedNamingTheModelTheVersionAndBothNumbers) {
  absl::Status s = CheckQualityGate(Record(27.4, 30.0), "", 5.0, false);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("target_version 3 of model smollm2 (aaaaaaaaaaaaaaaa)"));
  EXPECT_THAT(s.message(), HasSubstr("by 9.49%"));
  EXPECT_THAT(s.message(), HasSubstr("27.400 -> 30.000 over 16384 tokens"));
  EXPECT_THAT(s.message(), HasSubstr("quality budget of 5.00%"));
  EXPECT_THAT(s.message(), HasSubstr("allow_quality_regression"));
}

TEST(QualityGateTest, AVersionWithinTheBudgetPassesAndSoDoesOneAtIt) {
  EXPECT_TRUE(CheckQualityGate(Record(27.4, 28.0), "", 5.0, false).ok());  // +2.19%
  EXPECT_TRUE(CheckQualityGate(Record(20.0, 21.0), "", 5.0, false).ok());  // +5.00% exactly
  EXPECT_FALSE(CheckQualityGate(Record(20.0, 21.0), "", 4.99, false).ok());
  EXPECT_NEAR(PplIncreasePct(Record(27.4, 30.0).strategy->provenance()), 9.4890510949, 1e-9);
}

TEST(QualityGateTest, AVersionWithNoRecordedQualityIsRefusedUnlessAllowed) {
  absl::Status s = CheckQualityGate(Record(0, 0, 0), "smollm2", 2.0, false);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("no recorded held-out quality"));
  EXPECT_THAT(s.message(), HasSubstr("2.00%"));
  EXPECT_TRUE(CheckQualityGate(Record(0, 0, 0), "smollm2", 2.0, true).ok());
}

TEST(QualityGateTest, TheOverrideAndTheQualityAreRecordedInTheRollout) {
  const StrategyRecord record = Record(27.4, 30.0);
  EXPECT_TRUE(CheckQualityGate(record, "", 5.0, true).ok());
  QualityGateRecord g = GateRecordFor(record, 5.0, true);
  v1::QualityProbe probe;
  probe.set_mean_nll(3.25);
  probe.set_tokens(256);
  g.probe = probe;
  v1::Rollout r;
  RecordGate(g, &r);
  EXPECT_TRUE(r.allow_quality_regression());
  EXPECT_DOUBLE_EQ(r.quality_budget_pct(), 5.0);
  EXPECT_DOUBLE_EQ(r.target_quality().baseline_ppl(), 27.4);
  EXPECT_DOUBLE_EQ(r.target_quality().heldout_ppl(), 30.0);
  EXPECT_EQ(r.target_quality().heldout_tokens(), 16384);
  EXPECT_DOUBLE_EQ(r.target_probe().mean_nll(), 3.25);
  // Unmeasured: no quality recorded.
  v1::Rollout none;
  RecordGate(GateRecordFor(Record(0, 0, 0), 5.0, true), &none);
  EXPECT_FALSE(none.has_target_quality());
  EXPECT_FALSE(none.has_target_probe());
}

TEST(QualityGateTest, TheCatalogGivesEachModelItsBudgetOrTheDefault) {
  auto c = ModelCatalog::FromJson(R"({"models": [
      {"name": "a", "path": "a.gguf", "max_ppl_increase_pct": 2},
      {"name": "b", "path": "b.gguf"}]})",
                                  "");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ((*c)->QualityBudgetPct("a"), 2.0);
  EXPECT_DOUBLE_EQ((*c)->QualityBudgetPct("b"), kDefaultQualityBudgetPct);
  EXPECT_DOUBLE_EQ((*c)->QualityBudgetPct("absent"), kDefaultQualityBudgetPct);
  EXPECT_DOUBLE_EQ(kDefaultQualityBudgetPct, 5.0);
  auto bad = ModelCatalog::FromJson(
      R"({"models": [{"name": "a", "path": "a.gguf", "max_ppl_increase_pct": -1}]})", "");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("max_ppl_increase_pct"));
}

v1::FleetControlState StateWithProbe(uint64_t target, double mean_nll) {
  v1::FleetControlState state;
  v1::Rollout* r = state.add_rollouts();
  r->set_rollout_id("r1");
  r->set_model_fingerprint(kFingerprint);
  r->set_target_version(target);
  r->mutable_target_probe()->set_mean_nll(mean_nll);
  r->mutable_target_probe()->set_tokens(256);
  return state;
}

v1::StrategyAck Ack(uint64_t version, double mean_nll, int64_t tokens = 256) {
  v1::StrategyAck a;
  a.set_version(version);
  a.set_applied(true);
  a.mutable_probe()->set_mean_nll(mean_nll);
  a.mutable_probe()->set_tokens(tokens);
  return a;
}

TEST(ProbeDisagreementTest, AProbeWithinTheToleranceAgreesAndOnePastItIsNamedWithBothFigures) {
  const v1::FleetControlState state = StateWithProbe(2, 3.0);
  EXPECT_EQ(ProbeDisagreement(state, kFingerprint, Ack(2, 3.0 + 0.019)), std::nullopt);
  EXPECT_EQ(ProbeDisagreement(state, kFingerprint, Ack(2, 3.0 - 0.019)), std::nullopt);
  auto why = ProbeDisagreement(state, kFingerprint, Ack(2, 3.05));
  ASSERT_TRUE(why.has_value());
  EXPECT_THAT(*why, HasSubstr("quality probe 3.0500 nats/token over 256 tokens"));
  EXPECT_THAT(*why, HasSubstr("the registry's 3.0000 over 256 for version 2"));
  EXPECT_THAT(*why, HasSubstr("0.0500 apart, tolerance 0.02"));
  EXPECT_DOUBLE_EQ(kQualityProbeToleranceNats, 0.02);
}

TEST(ProbeDisagreementTest, DifferentTokenCountsDisagree) {
  EXPECT_TRUE(ProbeDisagreement(StateWithProbe(2, 3.0), kFingerprint, Ack(2, 3.0, 255)));
}

TEST(ProbeDisagreementTest, NothingToCompareIsAgreement) {
  const v1::FleetControlState state = StateWithProbe(2, 3.0);
  EXPECT_FALSE(ProbeDisagreement(state, kFingerprint, Ack(1, 9.0)));          // no reference for v1
  EXPECT_FALSE(ProbeDisagreement(state, std::string(64, 'b'), Ack(2, 9.0)));  // another model
  v1::StrategyAck no_probe = Ack(2, 9.0);
  no_probe.clear_probe();
  EXPECT_FALSE(ProbeDisagreement(state, kFingerprint, no_probe));
  v1::StrategyAck nack = Ack(2, 9.0);
  nack.set_applied(false);
  EXPECT_FALSE(ProbeDisagreement(state, kFingerprint, nack));
  v1::FleetControlState unprobed = state;
  unprobed.mutable_rollouts(0)->clear_target_probe();
  EXPECT_FALSE(ProbeDisagreement(unprobed, kFingerprint, Ack(2, 9.0)));
}

}  // namespace
}  // namespace kvshare
