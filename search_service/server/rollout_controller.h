// RolloutController: the control plane's state and its I/O (docs/ARCHITECTURE.md, The control
// plane) — the rollouts, pins and baselines, and the fleet as the strategy streams report it. Which
// version each worker should run, when a rollout step advances, and what NACKs and operator
// commands do are the rollout policy's rules (rollout_policy.h); the controller applies them
// under its lock after each stream event or command, sends workers the assignments that
// changed, persists the state and tells watchers.
//
// Persistence: rollouts, pins and baselines are one document (kvshare.v1.FleetControlState) in
// a FleetStateStore (fleet_state_store.h): `dir`/state.json by default, or an etcd key shared
// by several replicas. It is saved before a change is acknowledged; Open() resumes from it and
// refuses a state that is damaged, lost or inconsistent with the strategy store. A save that
// another replica's save beat (ABORTED) makes the controller take the stored state, and the
// operator's command answers ABORTED (retry it); a state another replica saved arrives through
// the store's watch and replaces this one's, and this replica's workers get what it assigns.
// The fleet itself is not persisted: workers announce themselves again when they reconnect.
//
// With several replicas only one may advance rollouts (its view of the fleet decides the
// steps): `may_advance` says whether this one is it (the leader; null: always).
//
// Thread-safe. Watchers are called after each change, outside the lock, from the thread that
// made it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvshare/v1/registry.pb.h"
#include "search_service/server/fleet_state_store.h"
#include "search_service/server/quality_gate.h"
#include "search_service/server/rollout_policy.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

// A worker's end of its strategy stream, as the controller sees it.
class WorkerChannel {
 public:
  virtual ~WorkerChannel() = default;
  // Queues an assignment; never blocks. Ignored once the stream is over.
  virtual void Send(const v1::StrategyAssignment& assignment) = 0;
};

struct RolloutControllerOptions {
  std::string dir;  // state.json lives here (Open without a store); created, locked while open
  absl::Duration worker_expiry = absl::Seconds(30);
  std::function<bool()> may_advance;  // null: this controller advances rollouts
  // Checked before each operator command that changes rollouts or pins (create, pause, resume,
  // promote, abort, set/clear pin); its error is the command's answer. Null: always allowed.
  // With several replicas: the leader's RequireLeader (leader_election.h).
  std::function<absl::Status(const char* command)> operator_gate;
};

class RolloutController {
 public:
  // `store` must outlive the controller. DataLoss naming the file, the field and the value when
  // the saved state is damaged, lost or names versions the store lacks (fleet_state_file.h;
  // the files are left as they are, for an operator to look at).
  static absl::StatusOr<std::unique_ptr<RolloutController>> Open(
      const RolloutControllerOptions& options, StrategyStore* store);
  // The same with the state in `state_store` (options.dir unused).
  static absl::StatusOr<std::unique_ptr<RolloutController>> Open(
      const RolloutControllerOptions& options, StrategyStore* store,
      std::unique_ptr<FleetStateStore> state_store);
  ~RolloutController();

  // --- the strategy streams ---
  // A worker announced itself on `channel` (a later hello for the same id replaces the older
  // channel). The assignment it should run, if it differs, is sent at once.
  void Hello(WorkerChannel* channel, const v1::WorkerHello& hello);
  void Ack(WorkerChannel* channel, const v1::StrategyAck& ack);
  void Load(WorkerChannel* channel, const v1::WorkerLoad& load);
  void Disconnected(WorkerChannel* channel);

  // --- operators (the model already resolved to a fingerprint) ---
  // The quality gate (quality_gate.h), when given, is asked about the target's record before
  // the rollout starts (outside the lock: it may measure the probe); its error is the answer,
  // and what it returns is recorded in the rollout. Workers' probes of a target whose rollout
  // records the registry's probe are checked on every ACK (rollout_policy.h).
  using QualityGate = std::function<absl::StatusOr<QualityGateRecord>(const StrategyRecord&)>;
  absl::StatusOr<v1::Rollout> CreateRollout(const std::string& fingerprint,
                                            const std::string& model_name, uint64_t target,
                                            std::vector<uint32_t> steps,
                                            const std::string& label_selector,
                                            const QualityGate& gate = nullptr);
  absl::StatusOr<v1::Rollout> GetRollout(const std::string& id) const;
  std::vector<v1::Rollout> ListRollouts() const;
  absl::StatusOr<v1::Rollout> Pause(const std::string& id);
  absl::StatusOr<v1::Rollout> Resume(const std::string& id);
  absl::StatusOr<v1::Rollout> Promote(const std::string& id);
  absl::StatusOr<v1::Rollout> Abort(const std::string& id);
  // `pin.model` is a fingerprint here. NotFound naming the version when the store lacks it.
  absl::StatusOr<v1::Pin> SetPin(const v1::Pin& pin);
  absl::StatusOr<std::vector<v1::Pin>> ClearPin(const v1::Pin& pin);
  std::vector<v1::Pin> ListPins() const;
  v1::FleetStatus Fleet() const;

  // This replica just became the leader: takes the stored state if it is newer than the one
  // in memory, and advances rollouts from there.
  void TakeLead();

  // Called after every change of rollouts, pins or the fleet. Returns a handle for Unwatch.
  int Watch(std::function<void()> on_change);
  void Unwatch(int handle);

 private:
  // A worker's stream, beside what the policy knows of it (state_.workers, same id).
  struct WorkerStream {
    v1::WorkerHello hello;
    WorkerChannel* channel = nullptr;  // null: disconnected
    bool has_assignment = false;
    uint64_t assigned_version = 0;
    std::string assigned_fingerprint, assigned_id, cause;
    // The last assignment sent on this channel, and whether its ACK/NACK is still to come.
    bool has_sent = false;
    uint64_t sent_version = 0;
    std::string sent_id;
    bool pending = false;
    v1::StrategyAck last_ack;
    absl::Time last_ack_time = absl::InfinitePast();
    v1::WorkerLoad load;
    int owning_layers = 0, n_layers = 0;
    double kv_bytes_per_token = 0;  // of the current version, as the worker reports it
  };

  RolloutController(RolloutControllerOptions options, StrategyStore* store,
                    std::unique_ptr<FleetStateStore> state_store)
      : options_(std::move(options)), store_(store), state_store_(std::move(state_store)) {}

  // Saves state_.control. On a failure puts back `before` (when given), and on ABORTED
  // (another replica saved first) then takes the stored state.
  absl::Status Save(const v1::FleetControlState* before = nullptr)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A state another replica saved (the state store's watch).
  void Adopt(v1::FleetControlState state) ABSL_LOCKS_EXCLUDED(mu_);
  // What another replica says of a worker streaming to it (nullopt: no longer).
  void RemoteWorker(const std::string& replica, const std::string& worker_id,
                    std::optional<FleetWorker> worker) ABSL_LOCKS_EXCLUDED(mu_);
  // state_.workers[worker_id] from the local stream when it is connected, else from the other
  // replicas' records (a connected one first, else the latest seen).
  void MergeWorker(const std::string& worker_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Tells the other replicas (through the state store) what this one knows of a worker.
  void PublishLocal(const std::string& worker_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool MayAdvance() const { return !options_.may_advance || options_.may_advance(); }
  absl::Status OperatorGate(const char* command) const {
    return options_.operator_gate ? options_.operator_gate(command) : absl::OkStatus();
  }
  v1::Rollout* FindRollout(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Advances rollouts under the policy when this controller may (MayAdvance); true when the
  // state changed.
  bool Advance() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Advances rollouts under the policy, sends assignments; persists what changed.
  void Reconcile() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendAssignments() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The id of the worker on `channel`, or null.
  const std::string* WorkerOn(WorkerChannel* channel) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyWatchers() ABSL_LOCKS_EXCLUDED(mu_);
  // A state-changing operation on one rollout: runs `change`, saves, reconciles; on a failed
  // save the control state is as before.
  absl::StatusOr<v1::Rollout> Operate(const std::string& id,
                                      const std::function<absl::Status(v1::Rollout&)>& change);

  const RolloutControllerOptions options_;
  StrategyStore* const store_;
  const std::unique_ptr<FleetStateStore> state_store_;
  const absl::Time started_ = absl::Now();

  mutable absl::Mutex mu_;
  RolloutPolicyState state_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, WorkerStream> streams_ ABSL_GUARDED_BY(mu_);
  // Workers streaming to other replicas: worker id -> replica -> what it says.
  std::map<std::string, std::map<std::string, FleetWorker>> remote_ ABSL_GUARDED_BY(mu_);

  absl::Mutex watch_mu_;
  std::map<int, std::function<void()>> watchers_ ABSL_GUARDED_BY(watch_mu_);
  int next_watcher_ ABSL_GUARDED_BY(watch_mu_) = 0;
};

}  // namespace kvshare
