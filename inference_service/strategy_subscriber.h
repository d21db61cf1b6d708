// The worker's end of the strategy stream (kvshare.v1.StrategyDistribution, docs/ARCHITECTURE.md
// Control plane): one bidirectional stream to the search service for the worker's whole life.
//
// It announces the worker (id, model fingerprint, labels, the version it runs), applies every
// assignment through the StrategyHolder (new requests take it at once; in-flight ones keep
// theirs) and answers ACK, or NACK with the reason — fingerprint mismatch, invalid strategy,
// load failure — keeping the last good version. A strategy with output projections (issue 18)
// names them by hash; they are fetched from the registry on the same address before the
// strategy is applied (a fetch that fails NACKs with load failure). With a quality probe, an
// applied version's probe figure (worker_quality_probe.h) goes with its ACK, measured before the
// ACK is sent (a probe that fails is logged and left out; the version stays applied). It sends
// the scheduler's load every `load_interval`. When the stream breaks or the service cannot be
// reached it reconnects with jittered exponential backoff — to the next of the control-plane
// addresses, when it was given several (search-service replicas on one etcd) — and the worker keeps
// serving what it has meanwhile.
//
// Thread-safe. Start() spawns one thread; Stop() (or the destructor) cancels the stream and
// joins it. The holder and scheduler must outlive the subscriber.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "inference_service/scheduler.h"
#include "inference_service/strategy_holder.h"
#include "inference_service/worker_quality_probe.h"

namespace grpc {
class ClientContext;
}  // namespace grpc

namespace kvshare {

struct SubscriberOptions {
  // host:port of kvshare-search, or several, comma-separated (replicas; tried in turn).
  std::string control_plane;
  std::string worker_id;
  std::string model_fingerprint;
  std::string model_name;
  std::map<std::string, std::string> labels;
  std::string address;  // where this worker serves Generate
  absl::Duration load_interval = absl::Seconds(2);
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(5);
  // Measures each applied version's quality probe; null: no probe (must outlive the
  // subscriber).
  WorkerQualityProbe* quality_probe = nullptr;
  // KV bytes per token of a strategy in the worker's pool, reported in the hello and ACKs;
  // null: not reported.
  std::function<double(const SharingStrategy&)> kv_bytes_per_token;
};

// What the health details say about the control plane.
struct SubscriberState {
  bool connected = false;
  int64_t connects = 0;     // streams opened so far
  int64_t assignments = 0;  // received
  int64_t nacks = 0;
  std::string last_error;  // why the last stream ended or failed to open
  absl::Time last_change = absl::InfinitePast();
  std::string Describe() const;  // one line for logs and health details
};

class StrategySubscriber {
 public:
  StrategySubscriber(SubscriberOptions options, StrategyHolder* holder, Scheduler* scheduler);
  ~StrategySubscriber();

  void Start();
  void Stop();
  SubscriberState state() const;

 private:
  void Run();
  // One stream to `address` from connect to break; returns why it ended.
  std::string RunStream(const std::string& address);

  const SubscriberOptions options_;
  StrategyHolder* const holder_;
  Scheduler* const scheduler_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;  // the live stream's
  SubscriberState state_ ABSL_GUARDED_BY(mu_);
  // Output projections fetched for assignments, most recent first (the subscriber thread's
  // only: no lock). Bounded: a worker holds a few versions at most.
  static constexpr size_t kFetchedProjections = 4;
  std::deque<std::shared_ptr<const OutputProjections>> fetched_;
};

}  // namespace kvshare
