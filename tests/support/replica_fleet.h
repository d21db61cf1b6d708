// Real processes for the replicated control plane's tests and measurements: kvshare-search
// replicas on one etcd (--store etcd://...), kvshare-worker processes that hold strategy
// streams to a list of them, and a steady Generate load on the workers that counts what
// failed. Each process's stdout and stderr go to a log file in its directory; the objects
// SIGKILL their process when they go. The binaries' paths are given by the caller (the test
// targets define KVSHARE_SEARCH_BINARY and KVSHARE_WORKER_BINARY).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "kvshare/v1/inference.grpc.pb.h"
#include "kvshare/v1/registry.grpc.pb.h"
#include "kvshare/v1/search.grpc.pb.h"

namespace kvshare::testing {

// Polls `condition` every 20 ms until it holds (true) or `within` passes (false).
bool WaitFor(const std::function<bool()>& condition, absl::Duration within);

std::unique_ptr<grpc::ClientContext> ClientContext(absl::Duration deadline = absl::Seconds(10));

// One child process: `args` (args[0] the binary) with stdout and stderr appended to `log`.
class ChildProcess {
 public:
  ChildProcess(std::vector<std::string> args, std::string log)
      : args_(std::move(args)), log_(std::move(log)) {}
  ~ChildProcess() { Kill(); }
  void Start();
  void Signal(int sig);
  // SIGCONT (a stopped process dies too), SIGKILL, reaped.
  void Kill();
  bool Running() const;
  std::string Log() const;

 private:
  std::vector<std::string> args_;
  const std::string log_;
  pid_t pid_ = -1;
};

// One kvshare-search replica: its files under `dir`, its store `store` (etcd://...), the leader
// lease `leader_ttl_s`, and `extra` flags; on `port` (0: any free one, a new one per Start).
class SearchReplica {
 public:
  SearchReplica(std::string binary, std::string dir, std::string store, int leader_ttl_s,
                std::vector<std::string> extra = {}, int port = 0);
  // Starts it and waits (60 s at most) for its port file; false with the log on failure.
  bool Start();
  void Kill() { process_.reset(); }
  bool Running() const { return process_ != nullptr && process_->Running(); }
  std::string Log() const;
  int port() const { return port_; }
  std::string address() const;  // "127.0.0.1:PORT"
  v1::StrategyRegistry::Stub& registry() { return *registry_; }
  v1::Rollouts::Stub& rollouts() { return *rollouts_; }
  v1::SearchService::Stub& jobs() { return *jobs_; }
  // grpc.health.v1.Health/Check of the whole server: 1 SERVING, 2 NOT_SERVING, -1 no answer.
  int Health();

 private:
  const std::string binary_, dir_, store_;
  const int leader_ttl_s_;
  const std::vector<std::string> extra_;
  const int fixed_port_;
  std::unique_ptr<ChildProcess> process_;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::StrategyRegistry::Stub> registry_;
  std::unique_ptr<v1::Rollouts::Stub> rollouts_;
  std::unique_ptr<v1::SearchService::Stub> jobs_;
};

// One kvshare-worker on stories260K (1 thread, 4 MiB of KV) streaming to `control_plane`
// ("A,B,C").
class WorkerProcess {
 public:
  WorkerProcess(std::string binary, std::string dir, std::string id, std::string control_plane);
  // Starts it and waits (60 s at most) until it answers GetLoad.
  bool Start();
  void Signal(int sig) { process_->Signal(sig); }
  std::string Log() const { return process_->Log(); }
  const std::string& id() const { return id_; }
  v1::InferenceService::Stub& stub() { return *stub_; }
  // The strategy version new requests take (-1: no answer).
  int64_t Version();

 private:
  const std::string binary_, dir_, id_, control_plane_;
  std::unique_ptr<ChildProcess> process_;
  std::unique_ptr<v1::InferenceService::Stub> stub_;
};

// Clients sending short Generate requests back to back to each of `workers` (one client
// thread per worker) until Stop(); every request that does not end OK is counted, with its
// error kept.
class GenerateLoad {
 public:
  explicit GenerateLoad(std::vector<WorkerProcess*> workers);
  ~GenerateLoad() { Stop(); }
  void Stop();
  int64_t ok() const { return ok_.load(); }
  int64_t failed() const { return failed_.load(); }
  std::vector<std::string> errors() const;

 private:
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> ok_{0}, failed_{0};
  mutable std::mutex mu_;
  std::vector<std::string> errors_;
  std::vector<std::thread> threads_;
};

}  // namespace kvshare::testing
