// Durable search-job records: one JSON file per job (the kvshare.v1.SearchJob message in
// protobuf's JSON form, proto field names), <dir>/<job id>.json, written atomically
// (temporary, fsync, rename, fsync the directory). Rewritten at each change of state, not of
// progress. Holds an exclusive lock on the directory.
//
// A record that cannot be read back (larger than kMaxJobRecordBytes, not the message, a
// mistyped or out-of-range field, or a job_id that differs from its file name) is quarantined:
// moved, never overwritten, to <dir>/quarantine/<file name> (with a ".N" suffix when that name
// is taken), logged (event=job_record_quarantined, naming both paths and the reason), and
// listed by quarantined(). Job records are reports, so one damaged record must not keep the
// search service (and its registry) from starting; the job's id stays taken: its number is
// reported by highest_job_number(), so the runner never gives it to a new job, and Write()
// refuses it.
//
// Thread-safe: writes are serialised, and Write never lets an older snapshot of a job replace
// a newer one (each write carries the job's sequence number).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kvshare/v1/search.pb.h"
#include "search_service/server/data_dir.h"

namespace kvshare {

// A record ReadAll() moved aside.
struct QuarantinedJobRecord {
  std::string job_id;  // from the file name
  std::string path;    // where it was
  std::string moved_to;
  std::string reason;
};

class JobJournal {
 public:
  // Creates `dir` if needed; FailedPrecondition when another process holds it.
  static absl::StatusOr<std::unique_ptr<JobJournal>> Open(const std::string& dir);

  // Every readable record in the directory; unreadable ones are quarantined (above);
  // temporaries a crash left behind are removed.
  std::vector<v1::SearchJob> ReadAll();
  // Writes `job` unless a snapshot with a sequence >= `sequence` was already written.
  // FailedPrecondition for a job id whose record is quarantined.
  absl::Status Write(const v1::SearchJob& job, uint64_t sequence);

  // The records ReadAll() moved aside in this process.
  std::vector<QuarantinedJobRecord> quarantined() const;
  // The largest N of a "job-N" record seen by ReadAll(), readable, quarantined now or
  // earlier (in <dir>/quarantine); 0 when none.
  uint64_t highest_job_number() const;

  // "job-000042" -> 42; 0 for any other shape or a number above 10^15 - 1.
  static uint64_t JobNumber(const std::string& job_id);

 private:
  JobJournal(std::string dir, std::unique_ptr<DirectoryLock> lock)
      : dir_(std::move(dir)), lock_(std::move(lock)) {}
  // Moves `name` into the quarantine directory without replacing anything there.
  absl::StatusOr<std::string> Quarantine(const std::string& name);

  const std::string dir_;
  const std::unique_ptr<DirectoryLock> lock_;
  mutable absl::Mutex mu_;
  std::map<std::string, uint64_t> written_ ABSL_GUARDED_BY(mu_);  // job id -> sequence
  std::vector<QuarantinedJobRecord> quarantined_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> quarantined_ids_ ABSL_GUARDED_BY(mu_);  // this run's and earlier ones'
  uint64_t highest_job_number_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvshare
