// A real etcd server for tests: one member on free loopback ports with its data in a temporary
// directory, started as a child process and killed (SIGKILL) when the object goes. Tests skip,
// with the reason, when the `etcd` binary is absent (Debian: etcd-server; scripts/setup.sh
// installs it).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvshare::testing {

// A free TCP port on 127.0.0.1 (the kernel's pick; free when this returns).
int FreeLoopbackPort();

class EtcdProcess {
 public:
  // The etcd binary ($KVSHARE_ETCD, else `etcd` on PATH), or "" when there is none.
  static std::string Binary();
  // Starts etcd and waits until it answers /health (at most `ready_within`). `name` tells
  // concurrent tests' data directories apart.
  static absl::StatusOr<std::unique_ptr<EtcdProcess>> Start(
      const std::string& name, absl::Duration ready_within = absl::Seconds(30));
  ~EtcdProcess();

  std::string endpoint() const;  // "127.0.0.1:PORT"
  std::string url(const std::string& prefix) const { return "etcd://" + endpoint() + prefix; }

  // SIGKILL, as a crash: the data directory stays.
  void Kill();
  // `members` etcd processes forming one cluster on loopback (names m0, m1, ...), each started
  // and healthy (a member answers /health once the cluster has a quorum). Every member's
  // endpoint() is a client URL of the same cluster.
  static absl::StatusOr<std::vector<std::unique_ptr<EtcdProcess>>> StartCluster(
      const std::string& name, int members, absl::Duration ready_within = absl::Seconds(60));
  // "etcd://E1,E2,.../prefix" over all of `members`.
  static std::string ClusterUrl(const std::vector<std::unique_ptr<EtcdProcess>>& members,
                                const std::string& prefix);

  // Starts it again on the same ports and data (after Kill).
  absl::Status Restart(absl::Duration ready_within = absl::Seconds(30));
  bool Healthy() const;

 private:
  EtcdProcess() = default;
  absl::Status Launch(absl::Duration ready_within);
  // Forks etcd (no wait).
  absl::Status Spawn();
  absl::Status WaitHealthy(absl::Duration ready_within);
  // One try at StartCluster; `out` holds the members started so far (killed when it goes).
  static absl::Status TryStartCluster(const std::string& name, int members,
                                      absl::Duration ready_within,
                                      std::vector<std::unique_ptr<EtcdProcess>>* out);
  // Whether the last start exited because a port it was given was taken meanwhile.
  bool LostAPortRace() const;

  std::string binary_, dir_;
  std::string member_ = "test", initial_cluster_;  // "" = this member alone
  std::string cluster_token_;
  int client_port_ = 0, peer_port_ = 0;
  pid_t pid_ = -1;
};

}  // namespace kvshare::testing
