// The rollout policy (docs/ARCHITECTURE.md, The control plane): which strategy version every
// worker should run, given rollouts, operator pins and each model's settled ("baseline")
// version; when a rollout step may advance; what a NACK and each operator command do. Pure
// functions over the control state and the fleet as the strategy streams report it, with the
// time passed in: no locks, files, streams or clock reads. RolloutController
// (rollout_controller.h) owns the state and does that I/O.
//
// What a worker should run, first match wins (DesiredFor):
//   1. a pin on its worker id, then a pin on one of its labels (first set wins);
//   2. the model's active (running or paused) rollout, when the worker is eligible and was
//      selected: the rollout's target;
//   3. the baseline version of the worker's model (version 0 = the identity strategy);
//   4. nothing: the worker keeps what it runs.
// Eligible for a rollout: connected, not pinned, and carrying every label of the rollout's
// selector — or, with no selector, announcing the rollout's model fingerprint.
//
// Rollout steps are percents of the eligible workers (rounded up). Selection is sticky:
// workers are taken in the order of a stable hash of their id (RolloutSelectionOrder), and a
// worker once selected stays selected while the rollout lives (the list is persisted). A step
// advances only when every selected worker runs the target (its ACK, or its hello after a
// reconnect); a selected worker that is away counts as not done until `worker_expiry` has
// passed since it was last seen (or since the control plane started); a selected worker
// pinned elsewhere does not hold the step up. After the last step the rollout completes and
// its target becomes the model's baseline.
//
// A NACK of the target, from a worker eligible for a running rollout, pauses the rollout with
// the worker's reason. So does an applied ACK whose quality probe disagrees with the one the
// rollout records for its target (ProbeDisagreement): the controller records it as a NACK
// (NACK_REASON_QUALITY_PROBE) naming both figures. That worker has applied the version (it
// cannot know the registry's figure) and the fleet view says so; Abort moves it back, Resume
// accepts it. Resume runs it again (the controller offers the target again to the
// workers that refused it). Promote jumps to the last step (100%), also from paused. Abort:
// the rollout ends and the model's baseline goes back to the version the rollout started
// from, so the workers it moved go back to that version.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvshare/v1/registry.pb.h"
#include "proto/wire/rollout_wire.h"

namespace kvshare {

// What the policy knows of one worker: its hello, its applied ACKs and its stream's state.
struct FleetWorker {
  std::string worker_id;
  std::string model_fingerprint;
  std::map<std::string, std::string> labels;
  bool connected = false;
  // What it runs: from its hello, then from each applied ACK.
  uint64_t current_version = 0;
  std::string current_strategy_id;
  // Last hello, ACK, load report or disconnect.
  absl::Time last_seen = absl::InfinitePast();
};

struct RolloutPolicyState {
  v1::FleetControlState control;               // rollouts, pins, baselines: persisted
  std::map<std::string, FleetWorker> workers;  // by worker id; not persisted
};

struct PolicyClock {
  absl::Time now;
  // When the control plane started: a worker is never counted away for longer than that.
  absl::Time started;
  absl::Duration worker_expiry;
};

// The strategy id of (model fingerprint, version), "" when there is none.
using StrategyIdOf = std::function<std::string(const std::string& fingerprint, uint64_t version)>;

// What a policy step did, one "event=... key=value" log line each, for the caller to log.
using PolicyEvents = std::vector<std::string>;

struct DesiredVersion {
  std::string fingerprint;
  uint64_t version = 0;
  std::string cause;  // "pin worker w1", "rollout r1 step 1/2 (50%)", "baseline"
};

bool IsActive(const v1::Rollout& r);    // running or paused (RolloutStateName: proto/wire)
std::string PinName(const v1::Pin& p);  // "worker <id>" or "label <key=value>"

// "key=value,key=value"; empty: no labels. InvalidArgument naming `field` and the bad part.
absl::StatusOr<std::map<std::string, std::string>> ParseLabelSelector(const std::string& selector,
                                                                      const std::string& field);

// Worker ids in the order rollouts select them (stable hash of the id, then the id).
std::vector<std::string> RolloutSelectionOrder(std::vector<std::string> worker_ids);

// The pin that applies to `w` (rule 1), or null.
const v1::Pin* PinFor(const v1::FleetControlState& state, const FleetWorker& w);
bool Eligible(const v1::FleetControlState& state, const v1::Rollout& r, const FleetWorker& w);
// Rules 1-4; nullopt is rule 4.
std::optional<DesiredVersion> DesiredFor(const v1::FleetControlState& state, const FleetWorker& w);

// Selects workers for every running rollout's step and advances the steps whose gate is met
// (completing a rollout sets its model's baseline). Refreshes each running rollout's
// eligible_workers and acked_workers. True when something to persist changed.
bool AdvanceRollouts(RolloutPolicyState& state, const StrategyIdOf& strategy_id_of,
                     const PolicyClock& clock, PolicyEvents* events);

// `ack` is a NACK from `w`: pauses each running rollout to ack.version() that `w` is eligible
// for, with the worker's reason. Returns the ids of the rollouts it paused.
std::vector<std::string> PauseOnNack(v1::FleetControlState& state, const FleetWorker& w,
                                     const v1::StrategyAck& ack, absl::Time now);

// When `ack` (applied, from a worker running model `fingerprint`) carries a quality probe and
// the latest rollout of that model to ack.version() records the registry's probe, the error of
// a NACK when the two differ by more than kQualityProbeToleranceNats (or scored different token
// counts): both figures, the difference and the tolerance. nullopt when they agree or either
// is absent.
std::optional<std::string> ProbeDisagreement(const v1::FleetControlState& state,
                                             const std::string& fingerprint,
                                             const v1::StrategyAck& ack);

// --- operator commands; FailedPrecondition naming the rollout's state when it does not apply ---

// Checks a CreateRollout request before the store is asked; empty `steps` become [100].
// InvalidArgument naming the field, the value and the rule.
absl::Status ValidateRolloutRequest(uint64_t target_version, std::vector<uint32_t>* steps,
                                    const std::string& label_selector);

struct RolloutRequest {
  std::string fingerprint, model_name, label_selector;
  uint64_t target_version = 0;
  std::vector<uint32_t> steps;  // validated
};
// Adds a running rollout from the model's baseline (0 if none) to the target, numbered
// r<next_rollout_number + 1>, and records its start as the baseline. FailedPrecondition when
// the model already has an active rollout.
absl::StatusOr<v1::Rollout> StartRollout(v1::FleetControlState& state, const RolloutRequest& req,
                                         absl::Time now);
absl::Status PauseRollout(v1::Rollout& r, absl::Time now);
absl::Status ResumeRollout(v1::Rollout& r, absl::Time now);
absl::Status PromoteRollout(v1::Rollout& r, absl::Time now);
// `r` is one of state's rollouts.
absl::Status AbortRollout(v1::FleetControlState& state, v1::Rollout& r, absl::Time now);

// A pin names a worker id or one label "key=value". InvalidArgument otherwise.
absl::Status ValidatePin(const v1::Pin& pin);
// Replaces the pin on the same worker id or label, or adds it.
void SetPin(v1::FleetControlState& state, const v1::Pin& pin);
// Removes the pin on pin's worker id or label; false when there is none.
bool ClearPin(v1::FleetControlState& state, const v1::Pin& pin);

}  // namespace kvshare
