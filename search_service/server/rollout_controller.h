// RolloutController: the control plane's state and decisions (DESIGN.md §2 Control plane) —
// which strategy version every worker should run, given rollouts, operator pins and each
// model's settled ("baseline") version — and the fleet as the strategy streams report it.
//
// What a worker should run, first match wins:
//   1. a pin on its worker id, then a pin on one of its labels (first set wins);
//   2. the model's active (running or paused) rollout, when the worker is eligible and was
//      selected: the rollout's target;
//   3. the baseline version of the worker's model (version 0 = the identity strategy);
//   4. nothing: the worker keeps what it runs.
// Eligible for a rollout: connected, not pinned, and carrying every label of the rollout's
// selector — or, with no selector, announcing the rollout's model fingerprint.
//
// Rollout steps are percents of the eligible workers. Selection is sticky: workers are taken
// in the order of a stable hash of their id (RolloutSelectionOrder), and a worker once
// selected stays selected while the rollout lives (the list is persisted). A step advances
// only when every selected worker runs the target (its ACK, or its hello after a reconnect);
// a selected worker that is away counts as not done until `worker_expiry` has passed since it
// was last seen (or since this process started). A NACK of the target pauses the rollout
// with the worker's reason. Abort: the rollout ends and the workers it moved go back to the
// baseline, which is the version the rollout started from.
//
// Persistence: rollouts, pins and baselines are one JSON document (kvshare.v1.
// FleetControlState) in `dir`/state.json, rewritten atomically (temporary, fsync, rename,
// fsync the directory) before a change is acknowledged; Open() resumes from it. The fleet
// itself is not persisted: workers announce themselves again when they reconnect.
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
#include "search_service/server/data_dir.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

// A worker's end of its strategy stream, as the controller sees it.
class WorkerChannel {
 public:
  virtual ~WorkerChannel() = default;
  // Queues an assignment; never blocks. Ignored once the stream is over.
  virtual void Send(const v1::StrategyAssignment& assignment) = 0;
};

// Worker ids in the order rollouts select them (stable hash of the id, then the id).
std::vector<std::string> RolloutSelectionOrder(std::vector<std::string> worker_ids);

struct RolloutControllerOptions {
  std::string dir;  // state.json lives here; created if missing; locked while open
  absl::Duration worker_expiry = absl::Seconds(30);
};

class RolloutController {
 public:
  // `store` must outlive the controller. DataLoss when state.json does not parse (the file is
  // left as it is, for an operator to look at).
  static absl::StatusOr<std::unique_ptr<RolloutController>> Open(
      const RolloutControllerOptions& options, StrategyStore* store);

  // --- the strategy streams ---
  // A worker announced itself on `channel` (a later hello for the same id replaces the older
  // channel). The assignment it should run, if it differs, is sent at once.
  void Hello(WorkerChannel* channel, const v1::WorkerHello& hello);
  void Ack(WorkerChannel* channel, const v1::StrategyAck& ack);
  void Load(WorkerChannel* channel, const v1::WorkerLoad& load);
  void Disconnected(WorkerChannel* channel);

  // --- operators (the model already resolved to a fingerprint) ---
  absl::StatusOr<v1::Rollout> CreateRollout(const std::string& fingerprint,
                                            const std::string& model_name, uint64_t target,
                                            std::vector<uint32_t> steps,
                                            const std::string& label_selector);
  absl::StatusOr<v1::Rollout> GetRollout(const std::string& id) const;
  std::vector<v1::Rollout> ListRollouts() const;
  absl::StatusOr<v1::Rollout> Pause(const std::string& id);
  absl::StatusOr<v1::Rollout> Resume(const std::string& id);
  absl::StatusOr<v1::Rollout> Promote(const std::string& id);
  absl::StatusOr<v1::Rollout> Abort(const std::string& id);
  // `pin.model` is a fingerprint here.
  absl::StatusOr<v1::Pin> SetPin(const v1::Pin& pin);
  absl::StatusOr<std::vector<v1::Pin>> ClearPin(const v1::Pin& pin);
  std::vector<v1::Pin> ListPins() const;
  v1::FleetStatus Fleet() const;

  // Called after every change of rollouts, pins or the fleet. Returns a handle for Unwatch.
  int Watch(std::function<void()> on_change);
  void Unwatch(int handle);

 private:
  struct WorkerEntry {
    v1::WorkerHello hello;
    WorkerChannel* channel = nullptr;  // null: disconnected
    uint64_t current_version = 0;
    std::string current_id;
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
    absl::Time last_seen = absl::InfinitePast();
    v1::WorkerLoad load;
    int owning_layers = 0, n_layers = 0;
  };
  struct Desired {
    std::string fingerprint;
    uint64_t version = 0;
    std::string cause;
  };

  RolloutController(RolloutControllerOptions options, StrategyStore* store,
                    std::unique_ptr<DirectoryLock> lock)
      : options_(std::move(options)), store_(store), lock_(std::move(lock)) {}

  absl::Status Save() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::Rollout* FindRollout(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  v1::Rollout* ActiveRollout(const std::string& fingerprint) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  const v1::Pin* PinFor(const WorkerEntry& w) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Eligible(const v1::Rollout& r, const WorkerEntry& w) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::optional<Desired> DesiredFor(const WorkerEntry& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The strategy of (fingerprint, version); version 0 is the identity.
  absl::StatusOr<std::shared_ptr<const SharingStrategy>> StrategyOf(const std::string& fingerprint,
                                                                    uint64_t version) const;
  // Selects workers, advances steps, sends assignments; persists what changed.
  void Reconcile() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AdvanceRollout(v1::Rollout& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendAssignments() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Touch(v1::Rollout& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  WorkerEntry* EntryFor(WorkerChannel* channel) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyWatchers() ABSL_LOCKS_EXCLUDED(mu_);
  // A state-changing operation on one rollout: runs `change`, reconciles, saves.
  absl::StatusOr<v1::Rollout> Operate(const std::string& id,
                                      const std::function<absl::Status(v1::Rollout&)>& change);

  const RolloutControllerOptions options_;
  StrategyStore* const store_;
  const std::unique_ptr<DirectoryLock> lock_;
  const absl::Time started_ = absl::Now();

  mutable absl::Mutex mu_;
  v1::FleetControlState state_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, WorkerEntry> workers_ ABSL_GUARDED_BY(mu_);

  absl::Mutex watch_mu_;
  std::map<int, std::function<void()>> watchers_ ABSL_GUARDED_BY(watch_mu_);
  int next_watcher_ ABSL_GUARDED_BY(watch_mu_) = 0;
};

}  // namespace kvshare
