// The rollout policy's rules (search_service/server/rollout_policy.h), one table or case per
// rule, on plain state and a fake clock: pins by worker id and label, label selectors and
// fingerprint eligibility, step percents and sticky selection (in the FNV-1a order computed
// independently below), the step gate, worker expiry, NACK pause, resume, promote, abort back
// to the baseline, rollout numbering and request and pin checks.
#include "search_service/server/rollout_policy.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvshare {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

const std::string kModelA = "model-a";
const std::string kModelB = "model-b";
const absl::Time kT0 = absl::FromUnixSeconds(1700000000);
const absl::Duration kExpiry = absl::Seconds(30);

// Strategy ids as a store would give them: one per (model, version).
std::string IdOf(const std::string& fingerprint, uint64_t version) {
  return absl::StrCat(fingerprint, "/v", version);
}
const StrategyIdOf kIds = IdOf;

FleetWorker Worker(const std::string& id, const std::string& fingerprint = kModelA,
                   std::map<std::string, std::string> labels = {}, uint64_t version = 1) {
  FleetWorker w;
  w.worker_id = id;
  w.model_fingerprint = fingerprint;
  w.labels = std::move(labels);
  w.connected = true;
  w.current_version = version;
  w.current_strategy_id = IdOf(fingerprint, version);
  w.last_seen = kT0;
  return w;
}

v1::Rollout Rollout(const std::string& id, std::vector<uint32_t> steps, uint64_t target = 2,
                    const std::string& selector = "", const std::string& fingerprint = kModelA) {
  v1::Rollout r;
  r.set_rollout_id(id);
  r.set_model_fingerprint(fingerprint);
  r.set_from_version(1);
  r.set_target_version(target);
  for (uint32_t s : steps) r.add_steps(s);
  r.set_state(v1::ROLLOUT_RUNNING);
  r.set_label_selector(selector);
  return r;
}

v1::Pin WorkerPin(const std::string& worker_id, uint64_t version) {
  v1::Pin p;
  p.set_worker_id(worker_id);
  p.set_model(kModelA);
  p.set_version(version);
  return p;
}

v1::Pin LabelPin(const std::string& label, uint64_t version) {
  v1::Pin p;
  p.set_label(label);
  p.set_model(kModelA);
  p.set_version(version);
  return p;
}

// The worker now runs `version` (its ACK of the assignment).
void Runs(RolloutPolicyState& state, const std::string& id, uint64_t version) {
  FleetWorker& w = state.workers.at(id);
  w.current_version = version;
  w.current_strategy_id = IdOf(w.model_fingerprint, version);
}

PolicyClock At(absl::Time now) { return PolicyClock{now, kT0 - absl::Hours(1), kExpiry}; }

std::vector<std::string> Selected(const v1::Rollout& r) {
  return {r.selected_workers().begin(), r.selected_workers().end()};
}

// --- rules 1-4: what a worker should run ---

struct DesiredCase {
  std::string name;
  std::vector<v1::Pin> pins;
  std::vector<v1::Rollout> rollouts;
  std::map<std::string, uint64_t> baselines;
  FleetWorker worker;
  std::optional<uint64_t> version;  // nullopt: no assignment (rule 4)
  std::string cause;
};

TEST(RolloutPolicyTest, WhatAWorkerShouldRunFollowsPinsThenItsRolloutThenTheBaseline) {
  v1::Rollout r1 = Rollout("r1", {50, 100});
  r1.add_selected_workers("w1");
  v1::Rollout paused = r1;
  paused.set_state(v1::ROLLOUT_PAUSED);
  v1::Rollout completed = r1;
  completed.set_state(v1::ROLLOUT_COMPLETED);
  v1::Rollout by_label = Rollout("r2", {100}, 3, "zone=a", kModelB);
  by_label.add_selected_workers("w1");
  FleetWorker away = Worker("w1");
  away.connected = false;
  const std::vector<DesiredCase> cases = {
      {"worker-id pin beats label pin and rollout",
       {LabelPin("zone=a", 4), WorkerPin("w1", 5)},
       {r1},
       {{kModelA, 1}},
       Worker("w1", kModelA, {{"zone", "a"}}),
       5,
       "pin worker w1"},
      {"label pin beats rollout",
       {LabelPin("zone=a", 4)},
       {r1},
       {{kModelA, 1}},
       Worker("w1", kModelA, {{"zone", "a"}}),
       4,
       "pin label zone=a"},
      {"first label pin set wins",
       {LabelPin("gpu=h100", 6), LabelPin("zone=a", 4)},
       {},
       {},
       Worker("w9", kModelA, {{"zone", "a"}, {"gpu", "h100"}}),
       6,
       "pin label gpu=h100"},
      {"label pin needs the value too",
       {LabelPin("zone=a", 4)},
       {},
       {{kModelA, 1}},
       Worker("w9", kModelA, {{"zone", "b"}}),
       1,
       "baseline"},
      {"selected worker gets the target",
       {},
       {r1},
       {{kModelA, 1}},
       Worker("w1"),
       2,
       "rollout r1 step 1/2 (50%)"},
      {"paused rollout keeps its target",
       {},
       {paused},
       {{kModelA, 1}},
       Worker("w1"),
       2,
       "rollout r1 step 1/2 (50%)"},
      {"completed rollout: baseline", {}, {completed}, {{kModelA, 7}}, Worker("w1"), 7, "baseline"},
      {"unselected worker: baseline", {}, {r1}, {{kModelA, 1}}, Worker("w2"), 1, "baseline"},
      {"selected but disconnected: not eligible, baseline",
       {},
       {r1},
       {{kModelA, 1}},
       away,
       1,
       "baseline"},
      {"selector takes a worker of another model",
       {},
       {by_label},
       {},
       Worker("w1", kModelA, {{"zone", "a"}}),
       3,
       "rollout r2 step 1/1 (100%)"},
      {"no pin, rollout or baseline: nothing",
       {},
       {r1},
       {{kModelB, 1}},
       Worker("w2"),
       std::nullopt,
       ""},
  };
  for (const DesiredCase& c : cases) {
    SCOPED_TRACE(c.name);
    v1::FleetControlState state;
    for (const v1::Pin& p : c.pins) *state.add_pins() = p;
    for (const v1::Rollout& r : c.rollouts) *state.add_rollouts() = r;
    for (const auto& [fp, v] : c.baselines) (*state.mutable_baselines())[fp] = v;
    std::optional<DesiredVersion> d = DesiredFor(state, c.worker);
    ASSERT_EQ(d.has_value(), c.version.has_value());
    if (!d.has_value()) continue;
    EXPECT_EQ(d->version, *c.version);
    EXPECT_EQ(d->cause, c.cause);
  }
}

struct EligibleCase {
  std::string name;
  std::string selector;
  std::vector<v1::Pin> pins;
  FleetWorker worker;
  bool eligible;
};

TEST(RolloutPolicyTest, EligibilityIsTheSelectorsLabelsOrWithoutOneTheFingerprint) {
  FleetWorker away = Worker("w1");
  away.connected = false;
  const std::vector<EligibleCase> cases = {
      {"no selector, same fingerprint", "", {}, Worker("w1"), true},
      {"no selector, another fingerprint", "", {}, Worker("w1", kModelB), false},
      {"selector matches, another fingerprint",
       "zone=a",
       {},
       Worker("w1", kModelB, {{"zone", "a"}}),
       true},
      {"selector: every label needed",
       "zone=a,gpu=h100",
       {},
       Worker("w1", kModelA, {{"zone", "a"}}),
       false},
      {"selector: all labels present",
       "zone=a,gpu=h100",
       {},
       Worker("w1", kModelA, {{"zone", "a"}, {"gpu", "h100"}, {"extra", "x"}}),
       true},
      {"selector: another value", "zone=a", {}, Worker("w1", kModelA, {{"zone", "b"}}), false},
      {"selector, fingerprint alone is not enough", "zone=a", {}, Worker("w1"), false},
      {"disconnected", "", {}, away, false},
      {"pinned by worker id", "", {WorkerPin("w1", 1)}, Worker("w1"), false},
      {"pinned by label",
       "",
       {LabelPin("zone=a", 1)},
       Worker("w1", kModelA, {{"zone", "a"}}),
       false},
  };
  for (const EligibleCase& c : cases) {
    SCOPED_TRACE(c.name);
    v1::FleetControlState state;
    for (const v1::Pin& p : c.pins) *state.add_pins() = p;
    EXPECT_EQ(Eligible(state, Rollout("r1", {100}, 2, c.selector), c.worker), c.eligible);
  }
}

// --- steps and sticky selection ---

TEST(RolloutPolicyTest, SelectionOrderIsTheFnv1aHashOfTheId) {
  // FNV-1a 64 computed independently (Python): w-c 0x7c5acb51653622e0 < w-b 0x7c5acc5165362493
  // < w-a 0x7c5acd5165362646; w4 0x9be92500c68f1278 < w5 0x9be92600c68f142b <
  // w1 0x9be92a00c68f1af7 < w2 0x9be92b00c68f1caa < w3 0x9be92c00c68f1e5d.
  EXPECT_THAT(RolloutSelectionOrder({"w-a", "w-b", "w-c"}), ElementsAre("w-c", "w-b", "w-a"));
  EXPECT_THAT(RolloutSelectionOrder({"w1", "w2", "w3", "w4", "w5"}),
              ElementsAre("w4", "w5", "w1", "w2", "w3"));
}

struct StepCase {
  int workers;
  uint32_t percent;
  std::vector<std::string> selected;  // in the order w4 w5 w1 w2 w3 ... (FNV-1a)
};

TEST(RolloutPolicyTest, AStepSelectsItsPercentOfTheEligibleRoundedUpInHashOrder) {
  const std::vector<StepCase> cases = {
      {4, 25, {"w4"}},              // 1 of 4
      {4, 26, {"w4", "w1"}},        // ceil(1.04)
      {5, 50, {"w4", "w5", "w1"}},  // ceil(2.5)
      {5, 1, {"w4"}},
      {3, 100, {"w1", "w2", "w3"}},
  };
  for (const StepCase& c : cases) {
    SCOPED_TRACE(absl::StrCat(c.workers, " workers at ", c.percent, "%"));
    RolloutPolicyState state;
    for (int i = 1; i <= c.workers; ++i) {
      state.workers[absl::StrCat("w", i)] = Worker(absl::StrCat("w", i));
    }
    // A worker of another model is not eligible and not counted.
    state.workers["x"] = Worker("x", kModelB);
    std::vector<uint32_t> steps = {c.percent};
    if (c.percent < 100) steps.push_back(100);
    *state.control.add_rollouts() = Rollout("r1", steps);
    PolicyEvents events;
    EXPECT_TRUE(AdvanceRollouts(state, kIds, At(kT0), &events));
    const v1::Rollout& r = state.control.rollouts(0);
    EXPECT_EQ(Selected(r), c.selected);
    EXPECT_EQ(r.current_step(), 0u);  // nobody runs the target yet
    EXPECT_EQ(r.eligible_workers(), static_cast<uint32_t>(c.workers));
    EXPECT_EQ(r.acked_workers(), 0u);
    EXPECT_EQ(events.size(), c.selected.size());
  }
}

TEST(RolloutPolicyTest, SelectionIsStickyAcrossNewWorkersAndReconnects) {
  RolloutPolicyState state;
  for (const char* id : {"w1", "w2", "w3", "w4"}) state.workers[id] = Worker(id);
  *state.control.add_rollouts() = Rollout("r1", {50, 100});
  PolicyEvents events;
  AdvanceRollouts(state, kIds, At(kT0), &events);
  EXPECT_THAT(Selected(state.control.rollouts(0)), ElementsAre("w4", "w1"));
  EXPECT_THAT(events,
              ElementsAre("event=rollout_selected rollout=r1 worker_id=w4 step=1 percent=50",
                          "event=rollout_selected rollout=r1 worker_id=w1 step=1 percent=50"));

  // w5 sorts before w1 but does not displace it: ceil(5 * 50%) = 3 adds it after.
  state.workers["w5"] = Worker("w5");
  AdvanceRollouts(state, kIds, At(kT0), &events);
  EXPECT_THAT(Selected(state.control.rollouts(0)), ElementsAre("w4", "w1", "w5"));

  // w1 away (2 of the 4 eligible left are selected: enough) and back: still selected, and
  // nobody was added for it meanwhile.
  state.workers["w1"].connected = false;
  AdvanceRollouts(state, kIds, At(kT0), &events);
  state.workers["w1"].connected = true;
  AdvanceRollouts(state, kIds, At(kT0), &events);
  EXPECT_THAT(Selected(state.control.rollouts(0)), ElementsAre("w4", "w1", "w5"));
  std::optional<DesiredVersion> d = DesiredFor(state.control, state.workers["w1"]);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->version, 2u);
}

// --- the step gate ---

TEST(RolloutPolicyTest, AStepAdvancesOnlyWhenEverySelectedWorkerRunsTheTarget) {
  RolloutPolicyState state;
  for (const char* id : {"w1", "w2"}) state.workers[id] = Worker(id);
  *state.control.add_rollouts() = Rollout("r1", {50, 100});
  (*state.control.mutable_baselines())[kModelA] = 1;
  const v1::Rollout& r = state.control.rollouts(0);
  PolicyEvents events;
  AdvanceRollouts(state, kIds, At(kT0), &events);
  EXPECT_THAT(Selected(r), ElementsAre("w1"));  // ceil(2 * 50%) = 1, w1 before w2
  EXPECT_EQ(r.current_step(), 0u);

  // The target's version with other content (another strategy id) is not the target.
  state.workers["w1"].current_version = 2;
  state.workers["w1"].current_strategy_id = "something else";
  EXPECT_FALSE(AdvanceRollouts(state, kIds, At(kT0), &events));
  EXPECT_EQ(r.current_step(), 0u);
  EXPECT_EQ(r.acked_workers(), 0u);

  Runs(state, "w1", 2);
  events.clear();
  EXPECT_TRUE(AdvanceRollouts(state, kIds, At(kT0 + absl::Seconds(5)), &events));
  EXPECT_EQ(r.current_step(), 1u);
  EXPECT_EQ(r.state(), v1::ROLLOUT_RUNNING);
  EXPECT_THAT(Selected(r), ElementsAre("w1", "w2"));
  EXPECT_EQ(r.acked_workers(), 1u);
  EXPECT_EQ(r.update_time().seconds(), absl::ToUnixSeconds(kT0 + absl::Seconds(5)));
  EXPECT_THAT(events, ElementsAre("event=rollout_step rollout=r1 step=2/2 percent=100",
                                  "event=rollout_selected rollout=r1 worker_id=w2 step=2 "
                                  "percent=100"));

  Runs(state, "w2", 2);
  EXPECT_TRUE(AdvanceRollouts(state, kIds, At(kT0), &events));
  EXPECT_EQ(r.state(), v1::ROLLOUT_COMPLETED);
  EXPECT_EQ(r.state_reason(), "2 workers run version 2");
  EXPECT_EQ(state.control.baselines().at(kModelA), 2u);
}

TEST(RolloutPolicyTest, ASelectedWorkerPinnedElsewhereDoesNotHoldTheStepUp) {
  RolloutPolicyState state;
  for (const char* id : {"w1", "w2"}) state.workers[id] = Worker(id);
  v1::Rollout r = Rollout("r1", {100});
  r.add_selected_workers("w1");
  r.add_selected_workers("w2");
  *state.control.add_rollouts() = r;
  *state.control.add_pins() = WorkerPin("w2", 1);
  Runs(state, "w1", 2);
  PolicyEvents events;
  AdvanceRollouts(state, kIds, At(kT0), &events);
  EXPECT_EQ(state.control.rollouts(0).state(), v1::ROLLOUT_COMPLETED);
  EXPECT_EQ(state.control.rollouts(0).state_reason(), "1 workers run version 2");
}

// --- worker expiry, on a fake clock ---

TEST(RolloutPolicyTest, AnAwaySelectedWorkerHoldsTheStepUntilItsExpiry) {
  RolloutPolicyState state;
  for (const char* id : {"w1", "w2", "w3"}) state.workers[id] = Worker(id);
  v1::Rollout r = Rollout("r1", {100});
  for (const char* id : {"w1", "w2", "w3"}) r.add_selected_workers(id);
  *state.control.add_rollouts() = r;
  Runs(state, "w1", 2);
  Runs(state, "w2", 2);
  state.workers["w3"].connected = false;
  state.workers["w3"].last_seen = kT0;
  PolicyEvents events;
  EXPECT_FALSE(AdvanceRollouts(state, kIds, At(kT0 + kExpiry - absl::Seconds(1)), &events));
  EXPECT_EQ(state.control.rollouts(0).state(), v1::ROLLOUT_RUNNING);
  EXPECT_TRUE(AdvanceRollouts(state, kIds, At(kT0 + kExpiry), &events));
  EXPECT_EQ(state.control.rollouts(0).state(), v1::ROLLOUT_COMPLETED);
  EXPECT_EQ(state.control.rollouts(0).state_reason(), "2 workers run version 2");
}

TEST(RolloutPolicyTest, AWorkerNotSeenSinceTheStartIsAwayFromTheStartOn) {
  // After a restart the persisted selection names w2, which has not reconnected: its time
  // away counts from the control plane's start, whatever it was before.
  RolloutPolicyState state;
  state.workers["w1"] = Worker("w1");
  state.workers["w3"] = Worker("w3");
  state.workers["w3"].connected = false;
  state.workers["w3"].last_seen = kT0 - absl::Hours(5);
  v1::Rollout r = Rollout("r1", {100});
  for (const char* id : {"w1", "w2", "w3"}) r.add_selected_workers(id);
  *state.control.add_rollouts() = r;
  Runs(state, "w1", 2);
  PolicyEvents events;
  const absl::Time started = kT0;
  AdvanceRollouts(state, kIds, {started + kExpiry - absl::Seconds(1), started, kExpiry}, &events);
  EXPECT_EQ(state.control.rollouts(0).state(), v1::ROLLOUT_RUNNING);
  AdvanceRollouts(state, kIds, {started + kExpiry, started, kExpiry}, &events);
  EXPECT_EQ(state.control.rollouts(0).state(), v1::ROLLOUT_COMPLETED);
}

// --- NACK, resume, promote, abort ---

struct NackCase {
  std::string name;
  FleetWorker worker;
  uint64_t version;
  bool applied;
  v1::RolloutState before;
  bool pauses;
};

TEST(RolloutPolicyTest, ANackOfTheTargetFromAnEligibleWorkerPausesWithItsReason) {
  FleetWorker away = Worker("w1");
  away.connected = false;
  const std::vector<NackCase> cases = {
      {"eligible worker NACKs the target", Worker("w1"), 2, false, v1::ROLLOUT_RUNNING, true},
      {"NACK of another version", Worker("w1"), 3, false, v1::ROLLOUT_RUNNING, false},
      {"worker of another model", Worker("w1", kModelB), 2, false, v1::ROLLOUT_RUNNING, false},
      {"an ACK", Worker("w1"), 2, true, v1::ROLLOUT_RUNNING, false},
      {"already paused", Worker("w1"), 2, false, v1::ROLLOUT_PAUSED, false},
      {"disconnected", away, 2, false, v1::ROLLOUT_RUNNING, false},
  };
  for (const NackCase& c : cases) {
    SCOPED_TRACE(c.name);
    v1::FleetControlState state;
    v1::Rollout r = Rollout("r1", {100});
    r.set_state(c.before);
    *state.add_rollouts() = r;
    v1::StrategyAck ack;
    ack.set_version(c.version);
    ack.set_applied(c.applied);
    ack.set_reason(v1::NACK_REASON_FINGERPRINT_MISMATCH);
    ack.set_error("model differs");
    std::vector<std::string> paused = PauseOnNack(state, c.worker, ack, kT0);
    if (c.pauses) {
      EXPECT_THAT(paused, ElementsAre("r1"));
      EXPECT_EQ(state.rollouts(0).state(), v1::ROLLOUT_PAUSED);
      EXPECT_EQ(state.rollouts(0).state_reason(),
                "worker w1 NACKed version 2 (NACK_REASON_FINGERPRINT_MISMATCH): model differs");
    } else {
      EXPECT_THAT(paused, IsEmpty());
      EXPECT_EQ(state.rollouts(0).state(), c.before);
    }
  }
}

TEST(RolloutPolicyTest, ResumeAfterANackRunsTheRolloutAgainToTheSameTarget) {
  RolloutPolicyState state;
  state.workers["w1"] = Worker("w1");
  *state.control.add_rollouts() = Rollout("r1", {100});
  PolicyEvents events;
  AdvanceRollouts(state, kIds, At(kT0), &events);
  v1::StrategyAck nack;
  nack.set_version(2);
  nack.set_reason(v1::NACK_REASON_LOAD_FAILURE);
  ASSERT_THAT(PauseOnNack(state.control, state.workers["w1"], nack, kT0), ElementsAre("r1"));
  v1::Rollout& r = *state.control.mutable_rollouts(0);
  // Paused: no step advances even once the worker runs the target.
  Runs(state, "w1", 2);
  EXPECT_FALSE(AdvanceRollouts(state, kIds, At(kT0), &events));
  EXPECT_EQ(r.state(), v1::ROLLOUT_PAUSED);

  Runs(state, "w1", 1);
  ASSERT_TRUE(ResumeRollout(r, kT0).ok());
  EXPECT_EQ(r.state(), v1::ROLLOUT_RUNNING);
  EXPECT_EQ(r.state_reason(), "");
  std::optional<DesiredVersion> d = DesiredFor(state.control, state.workers["w1"]);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->version, 2u);
  Runs(state, "w1", 2);
  AdvanceRollouts(state, kIds, At(kT0), &events);
  EXPECT_EQ(r.state(), v1::ROLLOUT_COMPLETED);

  absl::Status again = ResumeRollout(r, kT0);
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.message(), HasSubstr("rollout r1 is completed; only a paused rollout"));
}

TEST(RolloutPolicyTest, PromoteJumpsToTheLastStepAlsoFromPaused) {
  RolloutPolicyState state;
  for (const char* id : {"w1", "w2", "w3", "w4"}) state.workers[id] = Worker(id);
  *state.control.add_rollouts() = Rollout("r1", {10, 50, 100});
  v1::Rollout& r = *state.control.mutable_rollouts(0);
  PolicyEvents events;
  AdvanceRollouts(state, kIds, At(kT0), &events);
  EXPECT_THAT(Selected(r), ElementsAre("w4"));
  ASSERT_TRUE(PauseRollout(r, kT0).ok());
  EXPECT_EQ(r.state_reason(), "paused by an operator");

  ASSERT_TRUE(PromoteRollout(r, kT0).ok());
  EXPECT_EQ(r.state(), v1::ROLLOUT_RUNNING);
  EXPECT_EQ(r.current_step(), 2u);
  EXPECT_EQ(r.state_reason(), "promoted to 100% by an operator");
  AdvanceRollouts(state, kIds, At(kT0), &events);
  EXPECT_THAT(Selected(r), ElementsAre("w4", "w1", "w2", "w3"));
  for (const char* id : {"w1", "w2", "w3", "w4"}) Runs(state, id, 2);
  AdvanceRollouts(state, kIds, At(kT0), &events);
  EXPECT_EQ(r.state(), v1::ROLLOUT_COMPLETED);

  EXPECT_EQ(PromoteRollout(r, kT0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(PauseRollout(r, kT0).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(RolloutPolicyTest, AbortEndsTheRolloutAndSendsItsWorkersBackToTheBaseline) {
  RolloutPolicyState state;
  for (const char* id : {"w1", "w2"}) state.workers[id] = Worker(id);
  (*state.control.mutable_baselines())[kModelA] = 1;
  RolloutRequest req;
  req.fingerprint = kModelA;
  req.target_version = 2;
  req.steps = {100};
  auto started = StartRollout(state.control, req, kT0);
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_EQ(started->from_version(), 1u);
  PolicyEvents events;
  AdvanceRollouts(state, kIds, At(kT0), &events);
  Runs(state, "w1", 2);
  EXPECT_EQ(DesiredFor(state.control, state.workers["w1"])->version, 2u);

  v1::Rollout& r = *state.control.mutable_rollouts(0);
  ASSERT_TRUE(AbortRollout(state.control, r, kT0).ok());
  EXPECT_EQ(r.state(), v1::ROLLOUT_ABORTED);
  EXPECT_EQ(r.state_reason(), "aborted by an operator; workers go back to version 1");
  EXPECT_EQ(state.control.baselines().at(kModelA), 1u);
  for (const char* id : {"w1", "w2"}) {
    std::optional<DesiredVersion> d = DesiredFor(state.control, state.workers[id]);
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->version, 1u);
    EXPECT_EQ(d->cause, "baseline");
  }
  EXPECT_FALSE(AdvanceRollouts(state, kIds, At(kT0), &events));  // nothing runs any more
  EXPECT_EQ(AbortRollout(state.control, r, kT0).code(), absl::StatusCode::kFailedPrecondition);
}

// --- starting rollouts, requests, pins ---

TEST(RolloutPolicyTest, RolloutsAreNumberedAfterTheLastAndOneIsActivePerModel) {
  v1::FleetControlState state;
  RolloutRequest a;
  a.fingerprint = kModelA;
  a.target_version = 2;
  a.steps = {100};
  RolloutRequest b = a;
  b.fingerprint = kModelB;
  auto r1 = StartRollout(state, a, kT0);
  auto r2 = StartRollout(state, b, kT0);
  ASSERT_TRUE(r1.ok() && r2.ok());
  EXPECT_EQ(r1->rollout_id(), "r1");
  EXPECT_EQ(r2->rollout_id(), "r2");
  EXPECT_EQ(r1->from_version(), 0u);  // no baseline yet: the identity
  EXPECT_EQ(state.baselines().at(kModelA), 0u);
  EXPECT_EQ(state.next_rollout_number(), 2u);
  auto again = StartRollout(state, a, kT0);
  EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.status().message(),
              HasSubstr("already has rollout r1 (running, to version 2)"));
  EXPECT_EQ(state.rollouts_size(), 2);
}

struct RequestCase {
  uint64_t target;
  std::vector<uint32_t> steps;
  std::string selector;
  std::string error;  // empty: valid
};

TEST(RolloutPolicyTest, ARolloutRequestIsCheckedNamingTheField) {
  const std::vector<RequestCase> cases = {
      {2, {}, "", ""},
      {2, {10, 50, 100}, "zone=a,gpu=h100", ""},
      {0, {100}, "", "target_version 0 must be >= 1"},
      {2, {0, 100}, "", "steps[0] 0 is not a percent in [1, 100]"},
      {2, {101}, "", "steps[0] 101 is not a percent in [1, 100]"},
      {2, {50, 50, 100}, "", "steps[1] 50 must be above steps[0] 50"},
      {2, {50}, "", "steps[0] 50: the last step must be 100"},
      {2, {100}, "zone", "label_selector \"zone\": \"zone\" is not key=value"},
      {2, {100}, "=a", "is not key=value"},
  };
  for (const RequestCase& c : cases) {
    std::vector<uint32_t> steps = c.steps;
    absl::Status s = ValidateRolloutRequest(c.target, &steps, c.selector);
    SCOPED_TRACE(s.ToString());
    if (c.error.empty()) {
      EXPECT_TRUE(s.ok());
      if (c.steps.empty()) {
        EXPECT_THAT(steps, ElementsAre(100u));
      }
    } else {
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(s.message(), HasSubstr(c.error));
    }
  }
}

TEST(RolloutPolicyTest, APinNamesOneWorkerOrOneLabelAndReplacesThePinOnIt) {
  v1::Pin none;
  none.set_model(kModelA);
  EXPECT_EQ(ValidatePin(none).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidatePin(WorkerPin("", 1)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ValidatePin(LabelPin("zone=a,gpu=h100", 1)).message(),
              HasSubstr("a pin names one key=value"));
  EXPECT_EQ(ValidatePin(LabelPin("zone", 1)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidatePin(LabelPin("zone=a", 1)).ok());

  v1::FleetControlState state;
  SetPin(state, WorkerPin("w1", 1));
  SetPin(state, LabelPin("w1=x", 2));  // a label, not the worker id w1
  SetPin(state, WorkerPin("w1", 3));
  ASSERT_EQ(state.pins_size(), 2);
  EXPECT_EQ(state.pins(0).version(), 3u);
  EXPECT_TRUE(ClearPin(state, WorkerPin("w1", 0)));
  EXPECT_FALSE(ClearPin(state, WorkerPin("w1", 0)));
  ASSERT_EQ(state.pins_size(), 1);
  EXPECT_EQ(state.pins(0).label(), "w1=x");
}

}  // namespace
}  // namespace kvshare
