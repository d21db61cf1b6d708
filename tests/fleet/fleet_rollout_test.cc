// The fleet's control plane with real processes on loopback: a kvshare-search and several
// kvshare-worker processes (stories260K) holding strategy streams to it.
//   - a rollout in steps reaches every worker, and a step does not advance while a selected
//     worker has not ACKed (that worker is stopped with SIGSTOP);
//   - a worker running another model NACKs (fingerprint mismatch) and the rollout pauses;
//   - abort sends the workers a rollout moved back to the version they ran before;
//   - kill -9 of the search service mid-rollout: workers keep serving; after a restart the
//     rollout is where it was and finishes;
//   - a worker killed and restarted rejoins on the version assigned to it;
//   - a Generate stream running across a version switch is not cut and reports the version it
//     started on; new requests take the new version; pinning a version not held is
//     FAILED_PRECONDITION.
// No timing assertions: every wait is for a condition, with a generous deadline.
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fleet/fleet_fixture.h"

namespace kvshare {
namespace {

namespace fs = std::filesystem;
using fleet_testing::Context;
using fleet_testing::FleetTest;
using fleet_testing::WaitFor;
using ::testing::HasSubstr;

TEST_F(FleetTest, AStepAdvancesOnlyOnceItsWorkersAckedAndTheRolloutReachesEveryWorker) {
  for (const char* id : {"w-a", "w-b", "w-c"}) StartWorker(id);
  ASSERT_TRUE(WaitForConnected(3));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});
  // The worker the first step (33% of 3 = 1 worker) selects cannot ACK while stopped.
  const std::string first = RolloutSelectionOrder({"w-a", "w-b", "w-c"}).front();
  workers_[first].process->Signal(SIGSTOP);

  const v1::Rollout created = Create(v1, {33, 66, 100});
  ASSERT_TRUE(WaitFor([&] {
    auto r = Get(created.rollout_id());
    return r.ok() && r->selected_workers_size() >= 1;
  }));
  auto r = Get(created.rollout_id());
  ASSERT_TRUE(r.ok());
  // Selection and the gate run in the same step: the first observed state is still step 1.
  EXPECT_EQ(r->selected_workers(0), first);
  EXPECT_EQ(r->current_step(), 0u);
  EXPECT_EQ(r->acked_workers(), 0u);
  EXPECT_EQ(r->state(), v1::ROLLOUT_RUNNING);
  for (const char* id : {"w-a", "w-b", "w-c"}) {
    if (id != first) {
      EXPECT_EQ(VersionOf(id), 0u) << id << " moved before its step";
    }
  }

  workers_[first].process->Signal(SIGCONT);
  ASSERT_TRUE(WaitForState(created.rollout_id(), v1::ROLLOUT_COMPLETED));
  r = Get(created.rollout_id());
  EXPECT_EQ(r->current_step(), 2u);
  EXPECT_EQ(r->selected_workers_size(), 3);
  EXPECT_EQ(r->selected_workers(0), first);  // sticky: never re-picked
  for (const char* id : {"w-a", "w-b", "w-c"}) EXPECT_EQ(VersionOf(id), v1) << id;
  const v1::FleetStatus fleet = Fleet();
  ASSERT_EQ(fleet.workers_size(), 3);
  for (const auto& w : fleet.workers()) {
    EXPECT_EQ(w.current_version(), v1) << w.worker_id();
    EXPECT_TRUE(w.last_ack().applied()) << w.worker_id();
    EXPECT_EQ(w.owning_layers(), 4) << w.worker_id();
  }
}

TEST_F(FleetTest, AWorkerOfAnotherModelNacksAndTheRolloutPausesWithItsReason) {
  // A copy of stories260K with one weight changed: same shape, another fingerprint.
  const std::string other = dir_ + "/other";
  fs::create_directories(other);
  fs::copy_file(testing::Asset("stories260K.bin"), other + "/stories260K.bin");
  fs::copy_file(testing::Asset("tok512.bin"), other + "/tok512.bin");
  {
    std::fstream f(other + "/stories260K.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(28 + 4 * 1000);
    const char bytes[4] = {0, 0, static_cast<char>(0x80), 0x3f};  // 1.0f
    f.write(bytes, 4);
  }
  StartWorker("good", {"--label", "pool=a"});
  StartWorker("foreign", {"--label", "pool=a"}, other + "/stories260K.bin");
  ASSERT_TRUE(WaitForConnected(2));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});

  const v1::Rollout created = Create(v1, {100}, "pool=a");
  ASSERT_TRUE(WaitForState(created.rollout_id(), v1::ROLLOUT_PAUSED));
  const auto r = Get(created.rollout_id());
  EXPECT_THAT(r->state_reason(), HasSubstr("worker foreign NACKed version 1"));
  EXPECT_THAT(r->state_reason(), HasSubstr("NACK_REASON_FINGERPRINT_MISMATCH"));
  // The foreign worker keeps its last good version and keeps serving.
  EXPECT_EQ(VersionOf("foreign"), 0u);
  ASSERT_TRUE(WaitFor([&] { return VersionOf("good") == v1; }));
  v1::FleetStatus fleet = Fleet();
  for (const auto& w : fleet.workers()) {
    if (w.worker_id() != "foreign") continue;
    EXPECT_FALSE(w.last_ack().applied());
    EXPECT_EQ(w.last_ack().reason(), v1::NACK_REASON_FINGERPRINT_MISMATCH);
    EXPECT_THAT(w.last_ack().error(), HasSubstr("is not this worker's model"));
  }
  v1::GenerateRequest g;
  g.set_text("Once upon a time");
  g.set_max_tokens(4);
  auto ctx = Context();
  auto reader = workers_["foreign"].stub->Generate(ctx.get(), g);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
  }
  EXPECT_TRUE(reader->Finish().ok());
}

TEST_F(FleetTest, AbortSendsTheWorkersTheRolloutMovedBackToThePreviousVersion) {
  StartWorker("w-a");
  StartWorker("w-b");
  ASSERT_TRUE(WaitForConnected(2));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});
  const v1::Rollout first = Create(v1, {100});
  ASSERT_TRUE(WaitForState(first.rollout_id(), v1::ROLLOUT_COMPLETED));

  const uint64_t v2 = Publish({0, 0, 2, 2, 4});
  const auto order = RolloutSelectionOrder({"w-a", "w-b"});
  workers_[order[1]].process->Signal(SIGSTOP);  // holds the second step up
  const v1::Rollout second = Create(v2, {50, 100});
  ASSERT_TRUE(WaitFor([&] { return VersionOf(order[0]) == v2; }));
  ASSERT_TRUE(WaitFor([&] {
    auto r = Get(second.rollout_id());
    return r.ok() && r->current_step() == 1;
  }));
  EXPECT_EQ(Get(second.rollout_id())->from_version(), v1);

  v1::RolloutRef ref;
  ref.set_rollout_id(second.rollout_id());
  v1::Rollout aborted;
  ASSERT_TRUE(rollouts_->AbortRollout(Context().get(), ref, &aborted).ok());
  EXPECT_EQ(aborted.state(), v1::ROLLOUT_ABORTED);
  workers_[order[1]].process->Signal(SIGCONT);
  for (const std::string& id : order) {
    ASSERT_TRUE(WaitFor([&] { return VersionOf(id) == v1; })) << id;
  }
  ASSERT_TRUE(WaitFor([&] {
    const v1::FleetStatus f = Fleet();
    for (const auto& w : f.workers()) {
      if (w.current_version() != v1 || !w.last_ack().applied()) return false;
    }
    return f.workers_size() == 2;
  }));
  // Aborting twice is refused, naming the state.
  grpc::Status again = rollouts_->AbortRollout(Context().get(), ref, &aborted);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(again.error_message(), HasSubstr("is aborted"));
}

TEST_F(FleetTest, KillingTheSearchServiceMidRolloutLeavesWorkersServingAndTheRolloutResumes) {
  StartWorker("w-a");
  StartWorker("w-b");
  ASSERT_TRUE(WaitForConnected(2));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});
  const auto order = RolloutSelectionOrder({"w-a", "w-b"});
  workers_[order[1]].process->Signal(SIGSTOP);
  const v1::Rollout created = Create(v1, {50, 100});
  ASSERT_TRUE(WaitFor([&] {
    auto r = Get(created.rollout_id());
    return r.ok() && r->current_step() == 1 && r->selected_workers_size() == 2;
  }));
  ASSERT_EQ(VersionOf(order[0]), v1);

  search_->Kill(SIGKILL);
  // The worker keeps serving on its version, and says the control plane is gone.
  ASSERT_TRUE(WaitFor([&] {
    auto load = Load(order[0]);
    return load.ok() && load->control_plane().find("disconnected") != std::string::npos;
  }));
  v1::GenerateRequest g;
  g.set_text("Once upon a time");
  g.set_max_tokens(4);
  auto ctx = Context();
  auto reader = workers_[order[0]].stub->Generate(ctx.get(), g);
  v1::GenerateResponse msg;
  uint64_t ran_on = 99;
  while (reader->Read(&msg)) {
    if (msg.has_start()) ran_on = msg.start().strategy_version();
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(ran_on, v1);

  StartSearch();
  auto r = Get(created.rollout_id());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->state(), v1::ROLLOUT_RUNNING);
  EXPECT_EQ(r->current_step(), 1u);
  EXPECT_EQ(r->selected_workers_size(), 2);
  workers_[order[1]].process->Signal(SIGCONT);
  ASSERT_TRUE(WaitForState(created.rollout_id(), v1::ROLLOUT_COMPLETED));
  for (const std::string& id : order) EXPECT_EQ(VersionOf(id), v1) << id;
}

TEST_F(FleetTest, AWorkerKilledAndRestartedRejoinsOnTheVersionAssignedToIt) {
  StartWorker("w-a");
  StartWorker("w-b");
  ASSERT_TRUE(WaitForConnected(2));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});
  const v1::Rollout created = Create(v1, {100});
  ASSERT_TRUE(WaitForState(created.rollout_id(), v1::ROLLOUT_COMPLETED));

  workers_["w-b"].process->Kill(SIGKILL);
  ASSERT_TRUE(WaitForConnected(1));
  StartWorker("w-b");  // comes back on the identity (version 0), then is moved
  ASSERT_TRUE(WaitFor([&] { return VersionOf("w-b") == v1; }));
  ASSERT_TRUE(WaitForConnected(2));
}

TEST_F(FleetTest, AStreamAcrossAVersionSwitchRunsToItsEndOnTheVersionItStartedOn) {
  StartWorker("w-a");
  ASSERT_TRUE(WaitForConnected(1));
  const uint64_t v1 = Publish({0, 0, 2, 3, 4});

  v1::GenerateRequest long_request;
  long_request.set_text("Once upon a time");
  long_request.set_max_tokens(400);
  long_request.set_ignore_eos(true);
  auto ctx = Context(120);
  auto reader = workers_["w-a"].stub->Generate(ctx.get(), long_request);
  v1::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  ASSERT_TRUE(msg.has_start());
  EXPECT_EQ(msg.start().strategy_version(), 0u);

  const v1::Rollout created = Create(v1, {100});
  ASSERT_TRUE(WaitForState(created.rollout_id(), v1::ROLLOUT_COMPLETED));
  ASSERT_EQ(VersionOf("w-a"), v1);

  // A new request takes the new version; the old one is still pinnable; an unknown one is not.
  v1::GenerateRequest small;
  small.set_text("Once upon a time");
  small.set_max_tokens(2);
  for (std::optional<uint64_t> pin : {std::optional<uint64_t>(), std::optional<uint64_t>(0)}) {
    if (pin) small.set_strategy_version(*pin);
    auto c = Context();
    auto r = workers_["w-a"].stub->Generate(c.get(), small);
    v1::GenerateResponse m;
    ASSERT_TRUE(r->Read(&m));
    EXPECT_EQ(m.start().strategy_version(), pin ? *pin : v1);
    while (r->Read(&m)) {
    }
    EXPECT_TRUE(r->Finish().ok());
  }
  small.set_strategy_version(7);
  auto c = Context();
  auto refused = workers_["w-a"].stub->Generate(c.get(), small);
  while (refused->Read(&msg)) {
  }
  const grpc::Status st = refused->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(st.error_message(), HasSubstr("strategy_version 7 is not held"));

  int tokens = 0;
  v1::GenerateEnd end;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) tokens += msg.chunk().token_ids_size();
    if (msg.has_end()) end = msg.end();
  }
  const grpc::Status done = reader->Finish();
  EXPECT_TRUE(done.ok()) << done.error_message();
  EXPECT_EQ(tokens, 400);
  EXPECT_EQ(end.finish_reason(), v1::FINISH_REASON_LENGTH);
}

}  // namespace
}  // namespace kvshare
