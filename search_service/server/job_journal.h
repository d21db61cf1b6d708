// Durable search-job records: one JSON file per job (the kvshare.v1.SearchJob message in
// protobuf's JSON form, proto field names), <dir>/<job id>.json, written atomically
// (temporary, fsync, rename, fsync the directory). Rewritten at each change of state, not of
// progress. Holds an exclusive lock on the directory.
//
// Thread-safe: writes are serialised, and Write never lets an older snapshot of a job replace
// a newer one (each write carries the job's sequence number).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kvshare/v1/search.pb.h"
#include "search_service/server/data_dir.h"

namespace kvshare {

class JobJournal {
 public:
  // Creates `dir` if needed; FailedPrecondition when another process holds it.
  static absl::StatusOr<std::unique_ptr<JobJournal>> Open(const std::string& dir);

  // Every record in the directory. A file that does not parse is logged and left out (a job
  // record is a report, not the registry); temporaries a crash left behind are removed.
  std::vector<v1::SearchJob> ReadAll();
  // Writes `job` unless a snapshot with a sequence >= `sequence` was already written.
  absl::Status Write(const v1::SearchJob& job, uint64_t sequence);

 private:
  JobJournal(std::string dir, std::unique_ptr<DirectoryLock> lock)
      : dir_(std::move(dir)), lock_(std::move(lock)) {}

  const std::string dir_;
  const std::unique_ptr<DirectoryLock> lock_;
  absl::Mutex mu_;
  std::map<std::string, uint64_t> written_ ABSL_GUARDED_BY(mu_);  // job id -> sequence
};

}  // namespace kvshare
