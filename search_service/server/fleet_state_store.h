// FleetStateStore: where the RolloutController keeps its persisted state (kvshare.v1.
// FleetControlState: rollouts, pins, baselines). Two implementations:
//   - DirectoryFleetState (here): DATA_DIR/fleet/state.json through fleet_state_file.h, with a
//     DirectoryLock: one process owns it, so nobody else ever writes it;
//   - EtcdFleetState (etcd_fleet_state.h): one etcd key, shared by several replicas.
//
// Contract, for both:
//   - Read() returns the saved state (empty for a store never written) and refuses a damaged,
//     lost or inconsistent one with DataLoss naming where it lives, the field and the value.
//   - Write() bumps state->generation and saves it; on any failure `state` is as it was. It is
//     a compare-and-swap against what this object last read or wrote: ABORTED when another
//     writer saved in between (the caller must Read() again before deciding anything);
//     UNAVAILABLE when the store cannot be reached.
//   - Watch() calls `on_change` with each state saved after Read(), in order (possibly this
//     object's own writes too: keep only generations newer than yours), from a thread of the
//     store's; at most one watcher; Watch(nullptr) stops watching and returns once no call runs.
//
// The fleet's workers, for a leader that must see the workers streaming to other replicas:
// PublishWorker() records what this replica knows of one of its workers (etcd: a key bound
// to the replica's lease, so it goes when the replica dies); WatchWorkers() delivers every
// replica's records (the current ones first), and their removal as nullopt. The directory
// store has one process, which sees every worker itself: both do nothing there.
//
// Thread-compatible: the controller calls it under its lock.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvshare/v1/registry.pb.h"
#include "search_service/server/data_dir.h"
#include "search_service/server/fleet_state_file.h"
#include "search_service/server/rollout_policy.h"

namespace kvshare {

class FleetStateStore {
 public:
  virtual ~FleetStateStore() = default;
  virtual absl::StatusOr<v1::FleetControlState> Read(const VersionExists& version_exists) = 0;
  virtual absl::Status Write(v1::FleetControlState* state) = 0;
  virtual void Watch(std::function<void(v1::FleetControlState)> on_change) = 0;
  // Where the state lives, for logs: a path or "etcd KEY".
  virtual std::string Describe() const = 0;

  using WorkerUpdate = std::function<void(const std::string& replica, const std::string& worker_id,
                                          std::optional<FleetWorker> worker)>;
  virtual void PublishWorker(const FleetWorker& /*worker*/) {}
  // Watch(nullptr)'s rule holds here too.
  virtual void WatchWorkers(WorkerUpdate /*on_update*/) {}
};

class DirectoryFleetState : public FleetStateStore {
 public:
  // Creates `dir` if needed and locks it (FailedPrecondition when another process holds it).
  static absl::StatusOr<std::unique_ptr<DirectoryFleetState>> Open(const std::string& dir);

  absl::StatusOr<v1::FleetControlState> Read(const VersionExists& version_exists) override;
  absl::Status Write(v1::FleetControlState* state) override;
  // Nobody else writes a locked directory: never called.
  void Watch(std::function<void(v1::FleetControlState)>) override {}
  std::string Describe() const override { return dir_ + "/state.json"; }

 private:
  DirectoryFleetState(std::string dir, std::unique_ptr<DirectoryLock> lock)
      : dir_(std::move(dir)), lock_(std::move(lock)) {}
  const std::string dir_;
  const std::unique_ptr<DirectoryLock> lock_;
};

}  // namespace kvshare
