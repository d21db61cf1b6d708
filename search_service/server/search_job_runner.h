// Search jobs: a bounded queue in front of a fixed number of concurrent KVSharer searches
// (kvshare.v1.SearchJob is the job's state, as clients see it and as it is persisted).
//
// Create() checks the request completely (loading the model on its first use, building the
// calibration set) and answers only once the job is durably QUEUED; a later failure is a
// runtime one. States: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED, or QUEUED ->
// CANCELLED | FAILED. Cancel stops a running search before its next forward pass (within one
// candidate evaluation, or one held-out window while the quality is measured). A search that
// succeeds has its held-out quality measured (phase QUALITY; unless heldout_tokens is 0) and
// written into its strategy's provenance before it is published. A job whose record says QUEUED or
// RUNNING when the runner starts was cut off by the previous process's death: it becomes FAILED
// (ABORTED) with that reason — never lost, never stuck RUNNING. On shutdown (FailRemaining, the
// destructor) unfinished jobs end FAILED (UNAVAILABLE) with the reason.
//
// Watchers get a call after every change of a job (state or progress; each bumps the job's
// sequence number) and read the state with Snapshot().
//
// Uses (does not own) the catalog, the store and the metrics (which may be null); they must
// outlive the runner. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
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
#include "search_service/heldout_baseline_cache.h"
#include "search_service/server/job_journal.h"
#include "search_service/server/model_catalog.h"
#include "search_service/server/search_job_request.h"
#include "search_service/server/search_metrics.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

struct SearchJobRunnerOptions {
  int max_concurrent_jobs = 1;
  int max_queued_jobs = 16;
  // CPU threads of each running search; 0 = the machine's cores / max_concurrent_jobs.
  int search_threads = 0;
  // Where job records live; empty = in memory only (tests).
  std::string jobs_dir;
  // Called with each state the runner persists (with its sequence), after the journal write,
  // on the thread that made the change; must be quick (etcd_job_mirror.h queues it). Null: none.
  std::function<void(const v1::SearchJob&, uint64_t sequence)> on_persist;
};

struct JobSnapshot {
  uint64_t sequence = 0;
  v1::SearchJob job;
};

class SearchJobRunner {
 public:
  // Opens the journal (reporting jobs the previous process left unfinished as FAILED) and
  // starts the job threads. InvalidArgument for options out of range.
  static absl::StatusOr<std::unique_ptr<SearchJobRunner>> Start(
      const SearchJobRunnerOptions& options, ModelCatalog* catalog, StrategyStore* store,
      SearchMetrics* metrics);
  // FailRemaining("the search service shut down"), then joins the job threads.
  ~SearchJobRunner();

  // See kvshare.v1.SearchService.CreateSearchJob for the errors.
  absl::StatusOr<v1::SearchJob> Create(const v1::CreateSearchJobRequest& request);
  absl::StatusOr<v1::SearchJob> Get(const std::string& job_id) const;
  absl::StatusOr<JobSnapshot> Snapshot(const std::string& job_id) const;
  absl::StatusOr<v1::SearchJob> Cancel(const std::string& job_id);
  std::vector<v1::SearchJob> List(const v1::ListSearchJobsRequest& request) const;

  // `listener` runs after each change of the job, on the thread that made it, with no lock of
  // the runner held; it must be quick (e.g. schedule a write). A listener may still be running
  // when Unwatch returns. NotFound for an unknown job.
  absl::StatusOr<uint64_t> Watch(const std::string& job_id, std::function<void()> listener);
  void Unwatch(const std::string& job_id, uint64_t token);

  // Create answers UNAVAILABLE from now on.
  void StopAdmitting();
  // True once no job is queued or running; false when `timeout` passes first.
  bool WaitUntilIdle(absl::Duration timeout);
  // Queued jobs end FAILED at once, running ones at their next forward pass; both with
  // UNAVAILABLE and `reason`.
  void FailRemaining(const std::string& reason);

 private:
  struct Job;
  SearchJobRunner(const SearchJobRunnerOptions& options, ModelCatalog* catalog,
                  StrategyStore* store, SearchMetrics* metrics);
  absl::Status Recover();
  void JobThread();
  void Run(const std::shared_ptr<Job>& job);
  // Applies `edit` to the job's record under the lock, bumps its sequence, then (unlocked)
  // persists it when `persist` and tells its listeners.
  void Update(const std::shared_ptr<Job>& job, const std::function<void(v1::SearchJob&)>& edit,
              bool persist);
  absl::Status Persist(const std::shared_ptr<Job>& job);
  void Notify(const std::shared_ptr<Job>& job);
  // Ends a queued job (its record is edited by the caller under the lock).
  void EndQueuedLocked(Job& job, v1::SearchJobState state, absl::StatusCode code,
                       const std::string& error) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SearchJobRunnerOptions options_;
  const int search_threads_;
  ModelCatalog* const catalog_;
  StrategyStore* const store_;
  SearchMetrics* const metrics_;
  // The unshared held-out passes of earlier jobs (a model's, a slice's, ...: each job measures
  // against one; only the first job of a kind runs it).
  HeldoutBaselineCache baselines_;
  std::unique_ptr<JobJournal> journal_;  // null when jobs_dir is empty

  mutable absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Job>> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> idempotency_keys_ ABSL_GUARDED_BY(mu_);  // key -> job id
  std::deque<std::shared_ptr<Job>> queue_ ABSL_GUARDED_BY(mu_);
  int queued_ ABSL_GUARDED_BY(mu_) = 0;   // jobs in state QUEUED (some not yet in queue_)
  int running_ ABSL_GUARDED_BY(mu_) = 0;  // jobs in state RUNNING
  uint64_t next_job_number_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t next_listener_ ABSL_GUARDED_BY(mu_) = 1;
  bool admitting_ ABSL_GUARDED_BY(mu_) = true;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvshare
