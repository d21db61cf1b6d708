// The fleet's control state (rollouts, pins, baselines) on etcd, shared by search-service
// replicas (fleet_state_store.h's contract). Keys under the service's prefix P:
//
//   P/fleet/state       kvshare.v1.FleetControlState as JSON
//   P/fleet/generation  the state's generation ("17"), written in the same transaction
//
// Write is a compare-and-swap on the generation: it succeeds only while P/fleet/generation
// still holds the generation of the state the writer changed (absent for generation 0), and
// writes state and generation+1 together. A replica that decided on a stale state gets ABORTED
// and must take the newer one first. An optional fence (SetWriteFence: the leader key holding
// this replica's id) is compared in the same transaction, so a replica that lost its
// leadership cannot write at all.
//
// The generation key is also the "was written" marker: present with the state key missing, or
// disagreeing with the state's generation, is DataLoss naming the key (a deleted or replaced
// state, never read as an empty fleet). Watch() follows P/fleet/state with an etcd watch and
// delivers every state saved from the watch's start (this replica's own writes included: the
// receiver keeps only generations newer than its own).
//
// Workers: P/fleet/workers/<worker id>/<replica> (<replica>: the replica's id with each '/' as
// '_', so that the last '/' of the key ends the worker id) holds what replica <replica id> knows of
// a worker streaming to it (JSON), bound to that replica's lease (`lease_of`: the leader
// election's), so a dead replica's workers vanish with its lease. A record is rewritten only
// when it changed or the lease did.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/synchronization/mutex.h"
#include "search_service/server/etcd_client.h"
#include "search_service/server/fleet_state_store.h"

namespace kvshare {

class EtcdFleetState : public FleetStateStore {
 public:
  EtcdFleetState(std::shared_ptr<const EtcdClient> client, const std::string& prefix);
  ~EtcdFleetState() override;

  absl::StatusOr<v1::FleetControlState> Read(const VersionExists& version_exists) override;
  absl::Status Write(v1::FleetControlState* state) override;
  void Watch(std::function<void(v1::FleetControlState)> on_change) override;
  std::string Describe() const override { return "etcd " + state_key_; }
  void PublishWorker(const FleetWorker& worker) override;
  void WatchWorkers(WorkerUpdate on_update) override;

  // `replica` names this replica's worker records (Replica() returns it with '/' as '_');
  // `lease_of` gives the lease they are bound to (0: none yet). Until this is called, PublishWorker
  // writes nothing.
  void SetReplica(std::string replica, std::function<int64_t()> lease_of);
  // Writes succeed only while `fence` holds too (nullopt: no fence).
  void SetWriteFence(std::optional<EtcdCompare> fence);

  const std::string& state_key() const { return state_key_; }
  std::string Replica() const {
    absl::MutexLock lock(&mu_);
    return replica_;
  }
  const std::string& generation_key() const { return generation_key_; }

 private:
  const std::shared_ptr<const EtcdClient> client_;
  const std::string state_key_, generation_key_, workers_prefix_;
  std::string replica_ ABSL_GUARDED_BY(mu_);
  std::function<int64_t()> lease_of_ ABSL_GUARDED_BY(mu_);
  mutable absl::Mutex mu_;
  VersionExists version_exists_ ABSL_GUARDED_BY(mu_);
  int64_t read_revision_ ABSL_GUARDED_BY(mu_) = 0;  // the etcd revision Read() saw
  std::optional<EtcdCompare> fence_ ABSL_GUARDED_BY(mu_);
  // What was last written per worker: (value, lease).
  std::map<std::string, std::pair<std::string, int64_t>> published_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<EtcdWatch> watch_, workers_watch_;
};

}  // namespace kvshare
