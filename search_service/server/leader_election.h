// LeaderElection: at most one search-service replica leads (advances rollouts, reassigns
// workers), elected through etcd: a lease of `ttl` plus a transaction that creates the leader
// key, bound to that lease, only while the key is absent. The leader refreshes its lease every
// ttl/3; when it dies the lease expires, etcd deletes the key, and the next campaign of
// another replica (every `poll`) wins: a takeover within ttl + poll. A clean shutdown revokes
// the lease, so the takeover is immediate.
//
// A leader that cannot refresh its lease (etcd unreachable) steps down once `ttl` has passed
// since its last refresh — by then etcd may have let the key go — so two replicas never both
// believe they lead for longer than the clocks' drift. Writes that must be the leader's alone
// can also compare Fence() in their transaction.
//
// Operator commands that only the leader may take (rollouts, pins) are refused on the other
// replicas by RequireLeader(): FAILED_PRECONDITION naming the leader's address (the part of its
// id before "/pid"), or UNAVAILABLE while no leader is known (between a leader's death and the
// next campaign, or while etcd cannot be reached) — the gRPC convention for "send it there" and
// "retry", as etcd's own proxies answer.
//
// Thread-safe. `on_change(leading)` is called from the election's thread on every change.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "search_service/server/etcd_client.h"

namespace kvshare {

struct LeaderElectionOptions {
  std::string key;  // e.g. PREFIX/leader
  // This replica, unique: "<address>/pid<N>" where <address> is where clients reach it
  // (--advertise-address, default <hostname>:<port>); the key's value while it leads.
  std::string id;
  absl::Duration ttl = absl::Seconds(5);
  absl::Duration poll = absl::Milliseconds(500);
};

class LeaderElection {
 public:
  static std::unique_ptr<LeaderElection> Start(std::shared_ptr<const EtcdClient> client,
                                               LeaderElectionOptions options,
                                               std::function<void(bool leading)> on_change = {});
  // Stops campaigning; a leader revokes its lease (the key goes at once).
  ~LeaderElection();

  bool leading() const { return leading_.load(); }
  // The lease this replica campaigns with (0: none at the moment); other keys that must go
  // when this replica dies can be bound to it.
  int64_t lease() const { return lease_.load(); }
  const std::string& id() const { return options_.id; }
  // The current leader's id ("" when none, or etcd cannot be reached).
  std::string Leader() const;
  // OK while this replica leads; otherwise FAILED_PRECONDITION naming `what` and the leader's
  // address, or UNAVAILABLE when there is no leader (or etcd cannot be reached) at the moment.
  absl::Status RequireLeader(absl::string_view what) const;
  // "<address>/pid<N>" -> "<address>" (an id without "/pid" is returned as it is).
  static std::string AddressOf(absl::string_view id);

  // Holds while this replica leads.
  EtcdCompare Fence() const { return EtcdCompare::ValueIs(options_.key, options_.id); }

 private:
  LeaderElection(std::shared_ptr<const EtcdClient> client, LeaderElectionOptions options,
                 std::function<void(bool)> on_change)
      : client_(std::move(client)),
        options_(std::move(options)),
        on_change_(std::move(on_change)) {}
  void Run();
  void Set(bool leading);

  const std::shared_ptr<const EtcdClient> client_;
  const LeaderElectionOptions options_;
  const std::function<void(bool)> on_change_;
  std::atomic<bool> leading_{false};
  std::atomic<int64_t> lease_{0};
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace kvshare
