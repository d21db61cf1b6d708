// The search service assembled: model catalog, strategy store (data_dir/strategies, or etcd),
// job runner (records in data_dir/jobs), SearchService + StrategyRegistry + health +
// reflection on one gRPC port, with the fleet's control plane (StrategyDistribution streams to
// workers and the Rollouts service over a RolloutController, state in data_dir/fleet or etcd).
// kvshare-search's main and the tests start it the same way.
//
// Start() opens the store (refusing a damaged one), reports jobs the previous process left
// unfinished as FAILED, listens, and reports SERVING.
//
// With an etcd store several replicas share the registry and the fleet state; they elect a
// leader (leader_election.h, key PREFIX/leader) and only it advances rollouts; when it becomes
// leader it reloads the stored state and goes on from there. Health follows etcd: NOT_SERVING
// while etcd cannot be reached (writes answer UNAVAILABLE meanwhile), SERVING again when it
// answers. Rollout and pin commands are the leader's: another replica refuses them with
// FAILED_PRECONDITION naming the leader's address (UNAVAILABLE while none leads). Search jobs
// are mirrored to etcd (etcd_job_mirror.h) and the leader fails those of a replica that died.
// Drain(grace) reports NOT_SERVING, stops
// taking jobs, gives queued and running ones `grace`, fails the rest (UNAVAILABLE, with the
// reason), and stops the server. Registry reads keep working until the server stops.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "search_service/server/etcd_client.h"
#include "search_service/server/etcd_job_mirror.h"
#include "search_service/server/leader_election.h"
#include "search_service/server/model_catalog.h"
#include "search_service/server/rollout_controller.h"
#include "search_service/server/rollout_service.h"
#include "search_service/server/search_job_runner.h"
#include "search_service/server/search_job_service.h"
#include "search_service/server/search_metrics.h"
#include "search_service/server/strategy_registry_service.h"
#include "search_service/server/strategy_store.h"
#include "search_service/server/strategy_stream_service.h"
#include "service_runtime/grpc_server.h"

namespace kvshare {

struct SearchServerOptions {
  std::string address = "0.0.0.0:50061";  // port 0 picks a free one
  std::string data_dir;                   // required (job records live here in any case)
  // Where the registry and the fleet state live: "" = data_dir/strategies and data_dir/fleet;
  // "etcd://HOST:PORT[,HOST:PORT...]/PREFIX" = etcd, shared with other replicas.
  std::string store;
  // With an etcd store: the leader lease's TTL (a dead leader's rollouts resume on another
  // replica within it) and how often etcd is probed for health.
  absl::Duration leader_ttl = absl::Seconds(5);
  absl::Duration etcd_probe_interval = absl::Seconds(1);
  // With an etcd store: where clients reach this replica ("" = <hostname>:<port>). It leads the
  // replica's election id, so a follower refusing a rollout command names the leader by it.
  std::string advertise_address;
  std::string catalog_path;     // empty: ModelCatalog::Default()
  SearchJobRunnerOptions jobs;  // jobs_dir is set to data_dir/jobs
  // Rollouts, pins and baselines (data_dir/fleet/state.json); fleet.dir is set to data_dir/fleet.
  RolloutControllerOptions fleet;
};

class SearchServer {
 public:
  // `metrics` may be null; it must outlive the server.
  static absl::StatusOr<std::unique_ptr<SearchServer>> Start(const SearchServerOptions& options,
                                                             SearchMetrics* metrics);
  ~SearchServer();  // Shutdown(), then jobs still running end FAILED

  int port() const { return grpc_->port(); }
  ModelCatalog& catalog() { return *catalog_; }
  StrategyStore& store() { return *store_; }
  SearchJobRunner& jobs() { return *runner_; }
  RolloutController& rollouts() { return *rollouts_; }
  // Null without an etcd store.
  const LeaderElection* election() const { return election_.get(); }
  EtcdJobMirror* job_mirror() { return job_mirror_.get(); }

  // True when every job finished within `grace`.
  bool Drain(absl::Duration grace);
  void Shutdown(absl::Duration deadline = absl::Seconds(5));

 private:
  SearchServer() = default;

  // Destroyed in reverse: the gRPC server stops before what its services use.
  std::unique_ptr<ModelCatalog> catalog_;
  std::shared_ptr<const EtcdClient> etcd_;  // with --store etcd://
  std::unique_ptr<StrategyStore> store_;
  std::unique_ptr<EtcdJobMirror> job_mirror_;  // with --store etcd://; outlives the runner
  std::unique_ptr<SearchJobRunner> runner_;
  std::unique_ptr<SearchJobService> search_service_;
  std::unique_ptr<StrategyRegistryService> registry_service_;
  std::unique_ptr<RolloutController> rollouts_;
  std::unique_ptr<StrategyStreamService> stream_service_;
  std::unique_ptr<RolloutService> rollout_service_;
  std::unique_ptr<runtime::GrpcServer> grpc_;
  std::unique_ptr<LeaderElection> election_;
  // The etcd health probe (etcd stores only).
  absl::Notification stop_probe_;
  std::thread probe_;
  std::atomic<bool> drain_started_{false};
};

}  // namespace kvshare
