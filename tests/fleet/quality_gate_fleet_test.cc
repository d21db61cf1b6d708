// The quality gate and the quality probe (issue 17) with real processes on loopback: a
// kvshare-search (its default catalog: stories260K with the default 5% budget) and
// kvshare-worker processes (stories260K, f16 KV, the probe on).
//   - a version past the budget is FAILED_PRECONDITION naming its increase, both perplexities
//     and the budget; one with no recorded quality is refused too; the override is recorded
//     in the rollout and survives a restart of the service;
//   - a worker whose probe disagrees with the registry's (--quality-probe-perturb) is NACKed
//     naming both figures, and the rollout pauses;
//   - a measured version within the budget rolls out with every worker's probe agreeing, and
//     the fleet view shows its quality and KV bytes per token.
#include <signal.h>

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/engine/quality_probe.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fleet/fleet_fixture.h"

namespace kvshare {
namespace {

using fleet_testing::FleetTest;
using ::testing::HasSubstr;

// `kv_source` with a recorded held-out quality: baseline_ppl -> heldout_ppl.
SharingStrategy Measured(const std::string& fingerprint, std::vector<int> kv_source,
                         double baseline_ppl, double heldout_ppl) {
  auto s = SharingStrategy::Create(std::move(kv_source), fingerprint);
  EXPECT_TRUE(s.ok()) << s.status();
  StrategyProvenance& p = s->provenance();
  p.method = "manual";
  p.baseline_ppl = baseline_ppl;
  p.heldout_ppl = heldout_ppl;
  p.heldout_tokens = 4096;
  p.heldout_context = 256;
  return *s;
}

const v1::WorkerStatus* FindWorker(const v1::FleetStatus& f, const std::string& id) {
  for (const v1::WorkerStatus& w : f.workers()) {
    if (w.worker_id() == id) return &w;
  }
  return nullptr;
}

TEST_F(FleetTest, AVersionPastTheBudgetIsRefusedNamingBothNumbersAndTheOverrideIsRecorded) {
  // 10 -> 20: +100%, past the default budget of 5%.
  const uint64_t worse = Publish(Measured(fingerprint_, {0, 0, 2, 3, 4}, 10.0, 20.0));
  v1::Rollout r;
  grpc::Status refused = TryCreate(worse, {100}, "", false, &r);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(refused.error_message(), HasSubstr(absl::StrFormat("target_version %d", worse)));
  EXPECT_THAT(refused.error_message(), HasSubstr("stories260K"));
  EXPECT_THAT(refused.error_message(), HasSubstr("by 100.00%"));
  EXPECT_THAT(refused.error_message(), HasSubstr("10.000 -> 20.000"));
  EXPECT_THAT(refused.error_message(), HasSubstr("quality budget of 5.00%"));
  EXPECT_THAT(refused.error_message(), HasSubstr("allow_quality_regression"));

  // No recorded quality: refused as well.
  const uint64_t unmeasured = Publish({0, 0, 2, 2, 4});
  refused = TryCreate(unmeasured, {100}, "", false, &r);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(refused.error_message(), HasSubstr("no recorded held-out quality"));

  grpc::Status allowed = TryCreate(worse, {100}, "", true, &r);
  ASSERT_TRUE(allowed.ok()) << allowed.error_message();
  EXPECT_TRUE(r.allow_quality_regression());
  EXPECT_DOUBLE_EQ(r.quality_budget_pct(), 5.0);
  EXPECT_DOUBLE_EQ(r.target_quality().baseline_ppl(), 10.0);
  EXPECT_DOUBLE_EQ(r.target_quality().heldout_ppl(), 20.0);

  // The override is part of the stored state.
  search_->Kill(SIGKILL);
  StartSearch();
  auto again = fleet_testing::WaitFor([&] { return Get(r.rollout_id()).ok(); });
  ASSERT_TRUE(again);
  auto stored = Get(r.rollout_id());
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(stored->allow_quality_regression());
  EXPECT_DOUBLE_EQ(stored->target_quality().heldout_ppl(), 20.0);
}

TEST_F(FleetTest, AWorkerWhoseProbeDisagreesIsNackedNamingBothFiguresAndTheRolloutPauses) {
  StartWorker("honest");
  StartWorker("skewed", {"--quality-probe-perturb", "0.1"});
  ASSERT_TRUE(WaitForConnected(2));
  // 10 -> 10.2: +2%, within the budget.
  const uint64_t v = Publish(Measured(fingerprint_, {0, 0, 2, 3, 4}, 10.0, 10.2));
  v1::Rollout r;
  grpc::Status created = TryCreate(v, {100}, "", false, &r);
  ASSERT_TRUE(created.ok()) << created.error_message();
  ASSERT_TRUE(r.has_target_probe());
  const double reference = r.target_probe().mean_nll();
  EXPECT_EQ(r.target_probe().tokens(), kQualityProbeTokens);

  ASSERT_TRUE(WaitForState(r.rollout_id(), v1::ROLLOUT_PAUSED));
  auto paused = Get(r.rollout_id());
  ASSERT_TRUE(paused.ok());
  EXPECT_THAT(paused->state_reason(), HasSubstr("worker skewed"));
  EXPECT_THAT(paused->state_reason(), HasSubstr("NACK_REASON_QUALITY_PROBE"));
  EXPECT_THAT(paused->state_reason(), HasSubstr(absl::StrFormat("the registry's %.4f", reference)));

  ASSERT_TRUE(fleet_testing::WaitFor([&] {
    const v1::WorkerStatus* w = FindWorker(Fleet(), "honest");
    return w != nullptr && w->last_ack().version() == v;
  }));
  const v1::FleetStatus f = Fleet();
  const v1::WorkerStatus* skewed = FindWorker(f, "skewed");
  const v1::WorkerStatus* honest = FindWorker(f, "honest");
  ASSERT_NE(skewed, nullptr);
  ASSERT_NE(honest, nullptr);
  EXPECT_FALSE(skewed->last_ack().applied());
  EXPECT_EQ(skewed->last_ack().reason(), v1::NACK_REASON_QUALITY_PROBE);
  EXPECT_NEAR(skewed->last_ack().probe().mean_nll(), reference + 0.1, kQualityProbeToleranceNats);
  EXPECT_THAT(
      skewed->last_ack().error(),
      HasSubstr(absl::StrFormat("quality probe %.4f", skewed->last_ack().probe().mean_nll())));
  EXPECT_TRUE(honest->last_ack().applied());
  EXPECT_NEAR(honest->last_ack().probe().mean_nll(), reference, kQualityProbeToleranceNats);
}

TEST_F(FleetTest, AMeasuredVersionRollsOutWithEveryWorkersProbeAgreeing) {
  for (const char* id : {"w-a", "w-b"}) StartWorker(id);
  ASSERT_TRUE(WaitForConnected(2));
  const uint64_t v = Publish(Measured(fingerprint_, {0, 0, 2, 3, 4}, 10.0, 10.2));
  v1::Rollout r;
  grpc::Status created = TryCreate(v, {50, 100}, "", false, &r);
  ASSERT_TRUE(created.ok()) << created.error_message();
  EXPECT_FALSE(r.allow_quality_regression());
  ASSERT_TRUE(r.has_target_probe());
  ASSERT_TRUE(WaitForState(r.rollout_id(), v1::ROLLOUT_COMPLETED));

  auto model = Model::Load(testing::Asset("stories260K.bin"));
  ASSERT_TRUE(model.ok());
  const ModelConfig& c = (*model)->config();
  // f16 K and V: 2 x kv_dim x 2 bytes per position, for 4 owning layers of 5.
  const double kv_bytes = 4.0 * 2 * c.n_kv_heads * c.head_dim * 2;
  const v1::FleetStatus fleet = Fleet();
  ASSERT_EQ(fleet.workers_size(), 2);
  for (const v1::WorkerStatus& w : fleet.workers()) {
    EXPECT_EQ(w.current_version(), v) << w.worker_id();
    EXPECT_TRUE(w.last_ack().applied()) << w.worker_id() << ": " << w.last_ack().error();
    EXPECT_NEAR(w.last_ack().probe().mean_nll(), r.target_probe().mean_nll(),
                kQualityProbeToleranceNats);
    EXPECT_TRUE(w.has_quality());
    EXPECT_NEAR(w.ppl_increase_pct(), 2.0, 1e-9);
    EXPECT_DOUBLE_EQ(w.kv_bytes_per_token(), kv_bytes);
  }
}

}  // namespace
}  // namespace kvshare
