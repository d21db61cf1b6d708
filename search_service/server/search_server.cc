#include "search_service/server/search_server.h"

#include <unistd.h>

#include <algorithm>

#include "absl/strings/str_format.h"
#include "search_service/server/directory_strategy_store.h"
#include "search_service/server/etcd_fleet_state.h"
#include "search_service/server/etcd_strategy_store.h"
#include "service_runtime/drain.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {

absl::StatusOr<std::unique_ptr<SearchServer>> SearchServer::Start(
    const SearchServerOptions& options, SearchMetrics* metrics) {
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError(
        "--data-dir is empty; give a directory for the registry "
        "and job records");
  }
  std::unique_ptr<SearchServer> server(new SearchServer());
  if (options.catalog_path.empty()) {
    server->catalog_ = ModelCatalog::Default();
  } else {
    auto catalog = ModelCatalog::FromFile(options.catalog_path);
    if (!catalog.ok()) return catalog.status();
    server->catalog_ = std::move(*catalog);
  }
  std::string etcd_prefix;
  if (options.store.empty()) {
    auto store = DirectoryStrategyStore::Open(options.data_dir + "/strategies");
    if (!store.ok()) return store.status();
    server->store_ = std::move(*store);
  } else {
    auto target = ParseEtcdUrl(options.store, "--store");
    if (!target.ok()) return target.status();
    etcd_prefix = target->prefix;
    // A request in flight when etcd's raft leader dies is answered only after etcd's own
    // request timeout (5 s plus two election timeouts, measured: 6 s); giving up sooner and
    // asking the next member keeps losing one etcd member within the leader lease's TTL. Not
    // under 1 s: a loaded disk's fsync. (A retried transaction that did apply fails its
    // compare, which the store and the controller already read as "look again".)
    EtcdClientOptions etcd_options;
    etcd_options.request_timeout =
        std::clamp(options.leader_ttl / 2, absl::Seconds(1), absl::Seconds(5));
    server->etcd_ = std::make_shared<EtcdClient>(target->endpoints, etcd_options);
    auto store = EtcdStrategyStore::Open(server->etcd_, etcd_prefix);
    if (!store.ok()) return store.status();
    server->store_ = std::move(*store);
  }
  if (metrics != nullptr) {
    metrics->strategy_records.Set(double(server->store_->List("").size()));
  }
  SearchJobRunnerOptions jobs = options.jobs;
  jobs.jobs_dir = options.data_dir + "/jobs";
  if (server->etcd_ != nullptr) {
    EtcdJobMirrorOptions mirror;
    mirror.prefix = etcd_prefix;
    server->job_mirror_ = std::make_unique<EtcdJobMirror>(server->etcd_, mirror);
    jobs.on_persist = [m = server->job_mirror_.get()](const v1::SearchJob& job, uint64_t seq) {
      m->Record(job, seq);
    };
  }
  auto runner = SearchJobRunner::Start(jobs, server->catalog_.get(), server->store_.get(), metrics);
  if (!runner.ok()) return runner.status();
  server->runner_ = std::move(*runner);
  server->search_service_ = std::make_unique<SearchJobService>(server->runner_.get());
  server->registry_service_ = std::make_unique<StrategyRegistryService>(
      server->store_.get(), server->catalog_.get(), metrics);

  RolloutControllerOptions fleet = options.fleet;
  fleet.dir = options.data_dir + "/fleet";
  std::unique_ptr<FleetStateStore> fleet_state;
  EtcdFleetState* etcd_fleet_state = nullptr;
  if (server->etcd_ != nullptr) {
    auto etcd_state = std::make_unique<EtcdFleetState>(server->etcd_, etcd_prefix);
    etcd_fleet_state = etcd_state.get();
    fleet_state = std::move(etcd_state);
  } else {
    auto directory = DirectoryFleetState::Open(fleet.dir);
    if (!directory.ok()) return directory.status();
    fleet_state = std::move(*directory);
  }
  SearchServer* raw = server.get();
  if (server->etcd_ != nullptr) {
    fleet.may_advance = [raw] { return raw->election_ != nullptr && raw->election_->leading(); };
    fleet.operator_gate = [raw](const char* command) {
      if (raw->election_ == nullptr) {
        return absl::UnavailableError(absl::StrFormat(
            "%s: this replica is still starting (no leader election yet)", command));
      }
      return raw->election_->RequireLeader(command);
    };
  }
  auto rollouts = RolloutController::Open(fleet, server->store_.get(), std::move(fleet_state));
  if (!rollouts.ok()) return rollouts.status();
  server->rollouts_ = std::move(*rollouts);
  server->stream_service_ = std::make_unique<StrategyStreamService>(server->rollouts_.get());
  server->rollout_service_ =
      std::make_unique<RolloutService>(server->rollouts_.get(), server->registry_service_.get(),
                                       server->catalog_.get(), options.jobs.search_threads);

  runtime::GrpcServerOptions grpc_options;
  grpc_options.address = options.address;
  grpc_options.services = {server->search_service_.get(), server->registry_service_.get(),
                           server->stream_service_.get(), server->rollout_service_.get()};
  grpc_options.health_services = {
      v1::SearchService::service_full_name(), v1::StrategyRegistry::service_full_name(),
      v1::StrategyDistribution::service_full_name(), v1::Rollouts::service_full_name()};
  // Calibration text may come inline (WikiText-2's test split is 1.3 MB).
  grpc_options.max_receive_message_bytes = 64 << 20;
  auto grpc = runtime::GrpcServer::Start(grpc_options);
  if (!grpc.ok()) return grpc.status();
  server->grpc_ = std::move(*grpc);
  server->grpc_->SetServing(true);
  if (server->etcd_ != nullptr) {
    LeaderElectionOptions election;
    election.key = etcd_prefix + "/leader";
    char host[256] = {0};
    ::gethostname(host, sizeof(host) - 1);
    const std::string address = options.advertise_address.empty()
                                    ? absl::StrFormat("%s:%d", host, server->grpc_->port())
                                    : options.advertise_address;
    election.id = absl::StrFormat("%s/pid%d", address, ::getpid());
    election.ttl = options.leader_ttl;
    server->election_ = LeaderElection::Start(server->etcd_, election, [raw](bool leading) {
      if (leading) raw->rollouts_->TakeLead();
    });
    // This replica's workers, for the leader: bound to the election's lease.
    etcd_fleet_state->SetReplica(election.id, [raw] { return raw->election_->lease(); });
    server->job_mirror_->SetReplica(
        election.id, [raw] { return raw->election_->lease(); },
        [raw] { return raw->election_->leading(); });
    const std::string probe_key = election.key;
    const absl::Duration every = options.etcd_probe_interval;
    server->probe_ = std::thread([raw, probe_key, every] {
      bool up = true;
      do {
        const absl::Status s = raw->etcd_->Get(probe_key).status();
        if (s.ok() != up) {
          up = s.ok();
          spdlog::warn("event={} error={}", up ? "etcd_reachable" : "etcd_unreachable",
                       runtime::LogValue(std::string(s.message())));
        }
        raw->grpc_->SetServing(up && !raw->drain_started_);
      } while (!raw->stop_probe_.WaitForNotificationWithTimeout(every));
    });
  }
  return server;
}

SearchServer::~SearchServer() {
  if (job_mirror_ != nullptr && election_ != nullptr) {
    // The jobs' last states (FailRemaining below) still go out, on the lease held until now,
    // and no sweep runs once the election is gone.
    const int64_t last = election_->lease();
    job_mirror_->SetReplica(election_->id(), [last] { return last; }, {});
  }
  stop_probe_.Notify();
  if (probe_.joinable()) probe_.join();
  // Gives the lead up at once (the lease is revoked) rather than after its TTL.
  election_.reset();
  Shutdown(absl::ZeroDuration());
}

bool SearchServer::Drain(absl::Duration grace) {
  drain_started_ = true;
  runtime::DrainSteps steps;
  steps.stop_admitting = [this] { runner_->StopAdmitting(); };
  steps.wait_until_idle = [this](absl::Duration timeout) {
    return runner_->WaitUntilIdle(timeout);
  };
  steps.cancel_remaining = [this, grace] {
    runner_->FailRemaining(
        absl::StrFormat("the search service shut down (drain grace of %s ran "
                        "out)",
                        absl::FormatDuration(grace)));
  };
  runtime::DrainOptions options;
  options.grace = grace;
  return runtime::DrainAndShutdown(*grpc_, steps, options);
}

void SearchServer::Shutdown(absl::Duration deadline) {
  if (grpc_ != nullptr) grpc_->Shutdown(deadline);
}

}  // namespace kvshare
