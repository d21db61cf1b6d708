#include "search_service/server/leader_election.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace kvshare {

std::unique_ptr<LeaderElection> LeaderElection::Start(std::shared_ptr<const EtcdClient> client,
                                                      LeaderElectionOptions options,
                                                      std::function<void(bool)> on_change) {
  std::unique_ptr<LeaderElection> e(
      new LeaderElection(std::move(client), std::move(options), std::move(on_change)));
  e->thread_ = std::thread(&LeaderElection::Run, e.get());
  return e;
}

LeaderElection::~LeaderElection() {
  stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

std::string LeaderElection::Leader() const {
  auto r = client_->Get(options_.key);
  if (!r.ok() || r->kvs.empty()) return "";
  return r->kvs[0].value;
}

std::string LeaderElection::AddressOf(absl::string_view id) {
  const size_t at = id.rfind("/pid");
  return std::string(at == absl::string_view::npos ? id : id.substr(0, at));
}

absl::Status LeaderElection::RequireLeader(absl::string_view what) const {
  if (leading()) return absl::OkStatus();
  auto r = client_->Get(options_.key);
  if (!r.ok()) {
    return absl::UnavailableError(absl::StrFormat(
        "%s: only the leader may do this, and this replica (%s) cannot tell who leads: %s", what,
        options_.id, r.status().message()));
  }
  if (r->kvs.empty() || r->kvs[0].value.empty()) {
    return absl::UnavailableError(absl::StrFormat(
        "%s: only the leader may do this, and no replica leads at the moment (etcd key %s is "
        "empty; a new leader is elected within the lease TTL of %s): retry",
        what, options_.key, absl::FormatDuration(options_.ttl)));
  }
  const std::string& leader = r->kvs[0].value;
  if (leader == options_.id) return absl::OkStatus();  // elected; the flag follows at once
  return absl::FailedPreconditionError(absl::StrFormat(
      "%s: this replica (%s) is not the leader; send it to the leader at %s (etcd key %s holds "
      "\"%s\")",
      what, AddressOf(options_.id), AddressOf(leader), options_.key, leader.substr(0, 128)));
}

void LeaderElection::Set(bool leading) {
  if (leading_.exchange(leading) == leading) return;
  spdlog::info("event={} id={} key={}", leading ? "leader_elected" : "leader_stepped_down",
               options_.id, options_.key);
  if (on_change_) on_change_(leading);
}

void LeaderElection::Run() {
  int64_t lease = 0;
  absl::Time refreshed = absl::InfinitePast();
  const absl::Duration refresh_every = options_.ttl / 3;
  while (!stop_.HasBeenNotified()) {
    const absl::Time now = absl::Now();
    if (lease != 0 && now - refreshed >= refresh_every) {
      auto ttl = client_->KeepAlive(lease);
      if (ttl.ok()) {
        refreshed = now;
        // Still the key's holder? (An operator may have deleted it.)
        if (leading()) {
          auto held = client_->Get(options_.key);
          if (held.ok() && (held->kvs.empty() || held->kvs[0].value != options_.id)) Set(false);
        }
      } else if (absl::IsNotFound(ttl.status())) {
        lease = 0;  // expired: the key went with it
        Set(false);
      } else if (now - refreshed >= options_.ttl) {
        lease = 0;  // etcd may have let it go by now
        Set(false);
      }
    }
    if (lease == 0) {
      auto granted = client_->GrantLease(options_.ttl);
      if (granted.ok()) {
        lease = *granted;
        refreshed = now;
      }
    }
    if (lease != 0 && !leading()) {
      auto txn = client_->Txn({EtcdCompare::Absent(options_.key)},
                              {EtcdOp::Put(options_.key, options_.id, lease)},
                              {EtcdOp::Get(options_.key)});
      if (txn.ok()) {
        const bool mine = txn->succeeded || (txn->gets.size() == 1 && !txn->gets[0].kvs.empty() &&
                                             txn->gets[0].kvs[0].value == options_.id &&
                                             txn->gets[0].kvs[0].lease == lease);
        if (mine) Set(true);
      }
    }
    lease_ = lease;
    stop_.WaitForNotificationWithTimeout(leading() ? refresh_every : options_.poll);
  }
  lease_ = 0;
  if (lease != 0) (void)client_->RevokeLease(lease);
  Set(false);
}

}  // namespace kvshare
