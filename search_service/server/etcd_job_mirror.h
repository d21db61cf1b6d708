// EtcdJobMirror: every replica's search-job records on etcd, so that the jobs of a replica that
// dies are failed by the leader instead of vanishing with that replica (docs/ARCHITECTURE.md,
// The control plane). Job records stay in each replica's data_dir/jobs (job_journal.h, the
// source of truth while the replica lives); the mirror copies each persisted state to etcd:
//
//   P/jobs/<owner>/<job id>   kvshare.v1.SearchJob as JSON (proto field names): the owner's
//                             latest persisted state of the job
//   P/replicas/<owner>        the owner's election id, bound to its election lease
//
// <owner> is the replica's election id with each '/' turned into '_'. A job record is written
// only after P/replicas/<owner> was written with the lease the replica holds now, so a job
// record whose owner key is absent belongs to a replica whose lease expired: it stopped
// refreshing it for a whole TTL (dead, or cut off from etcd that long).
//
// The leader sweeps (FailOrphans): each QUEUED or RUNNING record of an owner without a key
// becomes FAILED (error_code ABORTED, the error naming the owner and the sweeping leader), in a
// transaction that compares the record's mod revision and the owner key's absence, so an owner
// that comes back and writes meanwhile wins. Records are not deleted (they are the report).
//
// Writes are asynchronous (Record() never blocks on etcd): a thread flushes the latest state
// of each job, newest sequence wins, retrying while etcd is unreachable; the same thread runs
// the sweep every `sweep_every` while `leading()` says so.
//
// Thread-safe.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvshare/v1/search.pb.h"
#include "search_service/server/etcd_client.h"

namespace kvshare {

// A job record above this is written without its result's strategy (the registry has it).
inline constexpr size_t kMaxMirroredJobBytes = 256 << 10;

struct EtcdJobMirrorOptions {
  std::string prefix;  // the service's etcd prefix ("/kvshare")
  absl::Duration flush_every = absl::Milliseconds(100);
  absl::Duration sweep_every = absl::Seconds(1);
};

class EtcdJobMirror {
 public:
  // Starts the flushing thread.
  EtcdJobMirror(std::shared_ptr<const EtcdClient> client, EtcdJobMirrorOptions options);
  // Flushes what it can within one attempt, then stops.
  ~EtcdJobMirror();

  // Who this replica is (its election id), the lease it holds (0: none yet; its P/replicas key
  // is bound to it) and whether it leads (sweeps run only then). Until this is called records
  // are only queued: the server learns its id once it listens, after the runner started.
  // Waits for a flush or sweep in progress: once it returns, the callbacks given before are
  // not called again (the server swaps them out before its election goes).
  void SetReplica(std::string replica_id, std::function<int64_t()> lease_of,
                  std::function<bool()> leading);

  // Queues `job` (persisted with `sequence`) for etcd; an older sequence than one queued or
  // written for the same job is ignored.
  void Record(const v1::SearchJob& job, uint64_t sequence);

  // The leader's sweep (above). The jobs it failed, as written.
  absl::StatusOr<std::vector<v1::SearchJob>> FailOrphans();

  // Every mirrored record: owner -> jobs, read from etcd.
  absl::StatusOr<std::map<std::string, std::vector<v1::SearchJob>>> ReadAll() const;

  // "host:1/pid2" -> "host:1_pid2".
  static std::string OwnerOf(const std::string& replica_id);
  // P/replicas/<owner> and P/jobs/<owner>/<job id> of this replica ("" before SetReplica).
  std::string replica_key() const;
  std::string job_key(const std::string& job_id) const;

  // True once nothing is queued (for tests): waits at most `timeout`.
  bool WaitUntilFlushed(absl::Duration timeout);

 private:
  void Run();
  // Writes the replica key (when the lease changed) and the queued records.
  void Flush();
  std::string Leader() const;  // this replica's id, for messages

  const std::shared_ptr<const EtcdClient> client_;
  const EtcdJobMirrorOptions options_;
  const std::string jobs_prefix_, replicas_prefix_;

  // Held by the thread through each flush and sweep, and by SetReplica (before mu_).
  absl::Mutex cycle_mu_;
  mutable absl::Mutex mu_;
  std::string replica_id_ ABSL_GUARDED_BY(mu_), owner_ ABSL_GUARDED_BY(mu_);
  std::function<int64_t()> lease_of_ ABSL_GUARDED_BY(mu_);
  std::function<bool()> leading_ ABSL_GUARDED_BY(mu_);
  struct Pending {
    v1::SearchJob job;
    uint64_t sequence = 0;
  };
  std::map<std::string, Pending> pending_ ABSL_GUARDED_BY(mu_);   // job id -> latest
  std::map<std::string, uint64_t> written_ ABSL_GUARDED_BY(mu_);  // job id -> sequence
  int64_t registered_lease_ ABSL_GUARDED_BY(mu_) = 0;  // lease P/replicas/<owner> is bound to
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace kvshare
