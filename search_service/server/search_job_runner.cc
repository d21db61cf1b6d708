#include "search_service/server/search_job_runner.h"

#include <algorithm>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/limits.h"
#include "common/util/exception_status.h"
#include "common/util/excerpt.h"
#include "kernels/backend.h"
#include "proto/wire/search_job_wire.h"
#include "proto/wire/strategy_wire.h"
#include "search_service/drop_search.h"
#include "search_service/heldout_quality.h"
#include "search_service/kv_plan_runner.h"
#include "search_service/server/registry_wire.h"
#include "search_service/strategy_search.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

// Empty, or longer than any id the runner makes, is a malformed request.
absl::Status CheckJobId(const std::string& job_id) {
  if (job_id.empty()) return absl::InvalidArgumentError("job_id is empty");
  if (job_id.size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "job_id '%s' is %d bytes; at most %d", Excerpt(job_id), job_id.size(), kMaxNameBytes));
  }
  return absl::OkStatus();
}

}  // namespace

struct SearchJobRunner::Job {
  uint64_t number = 0;
  v1::SearchJob record;  // guarded by the runner's mu_, as are the fields below but `cancel`
  uint64_t sequence = 1;
  std::atomic<bool> cancel{false};
  absl::StatusCode stop_code = absl::StatusCode::kCancelled;
  std::string stop_reason;
  std::map<uint64_t, std::function<void()>> listeners;
  // Set by Create, read by the job thread, released when the job ends.
  std::shared_ptr<const CatalogModel> model;
  PreparedSearch search;
  std::optional<HeldoutSlice> heldout;      // empty: the quality is not measured
  std::optional<ProjectionSets> drop_sets;  // set: a drop search (drop_attention)
  bool drop_substitutes = true;
};

SearchJobRunner::SearchJobRunner(const SearchJobRunnerOptions& options, ModelCatalog* catalog,
                                 StrategyStore* store, SearchMetrics* metrics)
    : options_(options),
      search_threads_(options.search_threads > 0
                          ? options.search_threads
                          : std::max(1, int(std::thread::hardware_concurrency()) /
                                            std::max(1, options.max_concurrent_jobs))),
      catalog_(catalog),
      store_(store),
      metrics_(metrics),
      baselines_(/*capacity=*/64, [metrics](bool hit) {
        if (metrics != nullptr) {
          (hit ? metrics->heldout_baselines_cached : metrics->heldout_baselines_computed)
              .Increment();
        }
      }) {}

absl::StatusOr<std::unique_ptr<SearchJobRunner>> SearchJobRunner::Start(
    const SearchJobRunnerOptions& options, ModelCatalog* catalog, StrategyStore* store,
    SearchMetrics* metrics) {
  if (options.max_concurrent_jobs < 1 || options.max_concurrent_jobs > 64) {
    return absl::InvalidArgumentError(absl::StrFormat("--max-concurrent-jobs %d must be in [1, 64]",
                                                      options.max_concurrent_jobs));
  }
  if (options.max_queued_jobs < 0 || options.max_queued_jobs > 100000) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--max-queued-jobs %d must be in [0, 100000]", options.max_queued_jobs));
  }
  std::unique_ptr<SearchJobRunner> runner(new SearchJobRunner(options, catalog, store, metrics));
  if (!options.jobs_dir.empty()) {
    auto journal = JobJournal::Open(options.jobs_dir);
    if (!journal.ok()) return journal.status();
    runner->journal_ = std::move(*journal);
    absl::Status s = runner->Recover();
    if (!s.ok()) return s;
  }
  for (int i = 0; i < options.max_concurrent_jobs; ++i) {
    runner->threads_.emplace_back([r = runner.get()] { r->JobThread(); });
  }
  return runner;
}

SearchJobRunner::~SearchJobRunner() {
  StopAdmitting();
  FailRemaining("the search service shut down");
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : threads_) t.join();
}

absl::Status SearchJobRunner::Recover() {
  const std::string now = absl::FormatTime(absl::RFC3339_sec, absl::Now(), absl::UTCTimeZone());
  std::vector<std::shared_ptr<Job>> interrupted;
  int recovered = 0;
  {
    absl::MutexLock lock(&mu_);
    for (v1::SearchJob& record : journal_->ReadAll()) {
      auto job = std::make_shared<Job>();
      job->number = JobJournal::JobNumber(record.job_id());
      next_job_number_ = std::max(next_job_number_, job->number + 1);
      if (!IsTerminalJobState(record.state())) {
        const bool was_running = record.state() == v1::SEARCH_JOB_RUNNING;
        EndJob(v1::SEARCH_JOB_FAILED,
               absl::AbortedError(absl::StrFormat(
                   "the search service stopped while this job was %s (found at restart, %s); its "
                   "search is lost: create the job again",
                   was_running ? "running" : "queued", now)),
               absl::Now(), &record);
        job->sequence = 2;  // newer than what is on disk
        interrupted.push_back(job);
      }
      if (!record.request().idempotency_key().empty()) {
        idempotency_keys_[record.request().idempotency_key()] = record.job_id();
      }
      job->record = std::move(record);
      jobs_[job->record.job_id()] = job;
      ++recovered;
    }
    // Ids of quarantined records stay taken (job_journal.h).
    next_job_number_ = std::max(next_job_number_, journal_->highest_job_number() + 1);
  }
  const size_t quarantined = journal_->quarantined().size();
  if (metrics_ != nullptr) metrics_->quarantined_job_records.Set(double(quarantined));
  for (const auto& job : interrupted) {
    absl::Status s = Persist(job);
    if (!s.ok()) return s;
    spdlog::warn("event=job_interrupted job_id={} error={}", job->record.job_id(),
                 runtime::LogValue(job->record.error()));
    if (metrics_ != nullptr) metrics_->jobs("failed").Increment();
  }
  spdlog::info("event=jobs_recovered dir={} jobs={} interrupted={} quarantined={}",
               options_.jobs_dir, recovered, interrupted.size(), quarantined);
  return absl::OkStatus();
}

absl::StatusOr<v1::SearchJob> SearchJobRunner::Create(const v1::CreateSearchJobRequest& request) {
  const std::string hash = SearchJobRequestHash(request);
  const std::string& key = request.idempotency_key();
  // A retried create gets the first job, whatever it has become.
  auto existing = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::StatusOr<v1::SearchJob> {
    const std::string& id = idempotency_keys_.at(key);
    const v1::SearchJob& record = jobs_.at(id)->record;
    if (record.request_hash() != hash) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "idempotency_key '%s' was used for a different request (job %s); use a new key for "
          "a new request",
          Excerpt(key), id));
    }
    return record;
  };
  {
    absl::MutexLock lock(&mu_);
    if (!key.empty() && idempotency_keys_.count(key) > 0) return existing();
    if (!admitting_) {
      return absl::UnavailableError("the search service is draining; it takes no new jobs");
    }
  }
  auto prepared = PrepareSearchJob(request, *catalog_);
  if (!prepared.ok()) {
    if (metrics_ != nullptr) metrics_->jobs("rejected").Increment();
    return prepared.status();
  }

  std::shared_ptr<Job> job;
  {
    absl::MutexLock lock(&mu_);
    if (!key.empty() && idempotency_keys_.count(key) > 0) return existing();
    if (!admitting_) {
      return absl::UnavailableError("the search service is draining; it takes no new jobs");
    }
    // Waiting room: the queue, plus the job threads that are free to take a job at once.
    const int free_threads = std::max(0, options_.max_concurrent_jobs - running_);
    if (queued_ >= options_.max_queued_jobs + free_threads) {
      if (metrics_ != nullptr) metrics_->jobs("rejected").Increment();
      return absl::ResourceExhaustedError(
          absl::StrFormat("the job queue is full (%d queued, --max-queued-jobs %d, %d running); "
                          "retry later",
                          queued_, options_.max_queued_jobs, running_));
    }
    job = std::make_shared<Job>();
    job->number = next_job_number_++;
    v1::SearchJob& r = job->record;
    r.set_job_id(absl::StrFormat("job-%06d", job->number));
    r.set_state(v1::SEARCH_JOB_QUEUED);
    *r.mutable_request() = request;
    if (request.has_calibration_text()) r.mutable_request()->set_calibration_text("");
    r.set_calibration_text_bytes(request.has_calibration_text() ? prepared->calibration_text_bytes
                                                                : 0);
    r.set_model_fingerprint(prepared->model->model->fingerprint());
    r.set_n_layers(prepared->model->model->config().n_layers);
    r.set_calibration_hash(prepared->search.calibration.hash);
    r.set_request_hash(hash);
    ToTimestamp(absl::Now(), r.mutable_create_time());
    v1::SearchProgress* progress = r.mutable_progress();
    progress->set_phase(v1::SEARCH_PHASE_QUEUED);
    progress->set_target_layers(prepared->search.options.target_layers);
    progress->set_best_score(1.0);
    progress->set_eta_seconds(-1);
    job->model = std::move(prepared->model);
    job->search = std::move(prepared->search);
    job->heldout = std::move(prepared->heldout);
    job->drop_sets = std::move(prepared->drop_sets);
    job->drop_substitutes = !request.has_drop_substitutes() || request.drop_substitutes();
    jobs_[r.job_id()] = job;
    if (!key.empty()) idempotency_keys_[key] = r.job_id();
    ++queued_;
    UpdateGaugesLocked();
  }
  // Durably QUEUED before anyone is told about it, and before it can run.
  absl::Status s = Persist(job);
  absl::MutexLock lock(&mu_);
  if (!s.ok()) {
    jobs_.erase(job->record.job_id());
    if (!key.empty()) idempotency_keys_.erase(key);
    --queued_;
    UpdateGaugesLocked();
    return absl::InternalError(absl::StrFormat("cannot record the job: %s", s.message()));
  }
  if (job->record.state() == v1::SEARCH_JOB_QUEUED) queue_.push_back(job);  // not cancelled yet
  if (metrics_ != nullptr) metrics_->jobs("created").Increment();
  spdlog::info("event=job_created job_id={} model={} target_layers={} samples={} tokens={}",
               job->record.job_id(), request.model(), job->search.options.target_layers,
               job->search.calibration.samples, job->search.calibration.tokens);
  return job->record;
}

absl::StatusOr<JobSnapshot> SearchJobRunner::Snapshot(const std::string& job_id) const {
  if (absl::Status s = CheckJobId(job_id); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrFormat("job_id '%s' names no job", Excerpt(job_id)));
  }
  return JobSnapshot{it->second->sequence, it->second->record};
}

absl::StatusOr<v1::SearchJob> SearchJobRunner::Get(const std::string& job_id) const {
  auto snapshot = Snapshot(job_id);
  if (!snapshot.ok()) return snapshot.status();
  return std::move(snapshot->job);
}

absl::StatusOr<v1::SearchJob> SearchJobRunner::Cancel(const std::string& job_id) {
  if (absl::Status s = CheckJobId(job_id); !s.ok()) return s;
  std::shared_ptr<Job> job;
  bool ended = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) {
      return absl::NotFoundError(absl::StrFormat("job_id '%s' names no job", Excerpt(job_id)));
    }
    job = it->second;
    if (job->record.state() == v1::SEARCH_JOB_QUEUED) {
      EndQueuedLocked(*job, v1::SEARCH_JOB_CANCELLED, absl::StatusCode::kCancelled,
                      "cancelled (CancelSearchJob) while queued");
      ended = true;
    } else if (job->record.state() == v1::SEARCH_JOB_RUNNING && !job->cancel.load()) {
      job->stop_code = absl::StatusCode::kCancelled;
      job->stop_reason = "cancelled (CancelSearchJob)";
      job->record.set_cancel_requested(true);
      ++job->sequence;
      job->cancel.store(true, std::memory_order_release);
    } else {
      return job->record;
    }
  }
  spdlog::info("event=job_cancel job_id={} was={}", job_id, ended ? "queued" : "running");
  if (ended) {
    absl::Status s = Persist(job);
    if (!s.ok()) {
      spdlog::error("event=job_persist_failed job_id={} error={}", job_id,
                    runtime::LogValue(std::string(s.message())));
    }
  }
  Notify(job);
  return Get(job_id);
}

std::vector<v1::SearchJob> SearchJobRunner::List(const v1::ListSearchJobsRequest& request) const {
  std::vector<std::shared_ptr<Job>> matching;
  std::vector<v1::SearchJob> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, job] : jobs_) {
    if (!request.model().empty() && job->record.request().model() != request.model()) continue;
    if (request.states_size() > 0 && std::find(request.states().begin(), request.states().end(),
                                               job->record.state()) == request.states().end()) {
      continue;
    }
    matching.push_back(job);
  }
  std::sort(matching.begin(), matching.end(),
            [](const auto& a, const auto& b) { return a->number > b->number; });
  const size_t limit = request.limit() > 0 ? size_t(request.limit()) : 100;
  for (size_t i = 0; i < matching.size() && i < limit; ++i) {
    out.push_back(matching[i]->record);
    if (request.omit_trace()) out.back().mutable_result()->clear_trace();
  }
  return out;
}

absl::StatusOr<uint64_t> SearchJobRunner::Watch(const std::string& job_id,
                                                std::function<void()> listener) {
  if (absl::Status s = CheckJobId(job_id); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    return absl::NotFoundError(absl::StrFormat("job_id '%s' names no job", Excerpt(job_id)));
  }
  const uint64_t token = next_listener_++;
  it->second->listeners[token] = std::move(listener);
  return token;
}

void SearchJobRunner::Unwatch(const std::string& job_id, uint64_t token) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it != jobs_.end()) it->second->listeners.erase(token);
}

void SearchJobRunner::StopAdmitting() {
  absl::MutexLock lock(&mu_);
  admitting_ = false;
}

bool SearchJobRunner::WaitUntilIdle(absl::Duration timeout) {
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return queued_ == 0 && running_ == 0; };
  absl::MutexLock lock(&mu_);
  return mu_.AwaitWithTimeout(absl::Condition(&idle), timeout);
}

void SearchJobRunner::FailRemaining(const std::string& reason) {
  std::vector<std::shared_ptr<Job>> ended;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, job] : jobs_) {
      if (job->record.state() == v1::SEARCH_JOB_QUEUED) {
        EndQueuedLocked(*job, v1::SEARCH_JOB_FAILED, absl::StatusCode::kUnavailable,
                        reason + " while the job was queued");
        ended.push_back(job);
      } else if (job->record.state() == v1::SEARCH_JOB_RUNNING && !job->cancel.load()) {
        job->stop_code = absl::StatusCode::kUnavailable;
        job->stop_reason = reason + " while the job was running";
        job->cancel.store(true, std::memory_order_release);
      }
    }
  }
  for (const auto& job : ended) {
    absl::Status s = Persist(job);
    if (!s.ok())
      spdlog::error("event=job_persist_failed error={}",
                    runtime::LogValue(std::string(s.message())));
    Notify(job);
  }
}

void SearchJobRunner::EndQueuedLocked(Job& job, v1::SearchJobState state, absl::StatusCode code,
                                      const std::string& error) {
  EndJob(state, absl::Status(code, error), absl::Now(), &job.record);
  ++job.sequence;
  --queued_;
  queue_.erase(std::remove_if(queue_.begin(), queue_.end(),
                              [&](const std::shared_ptr<Job>& q) { return q.get() == &job; }),
               queue_.end());
  job.model.reset();
  job.search = PreparedSearch();
  job.heldout.reset();
  job.drop_sets.reset();
  if (metrics_ != nullptr) metrics_->jobs(SearchJobStateName(state)).Increment();
  UpdateGaugesLocked();
}

void SearchJobRunner::UpdateGaugesLocked() {
  if (metrics_ == nullptr) return;
  metrics_->jobs_queued.Set(queued_);
  metrics_->jobs_running.Set(running_);
}

absl::Status SearchJobRunner::Persist(const std::shared_ptr<Job>& job) {
  if (journal_ == nullptr && !options_.on_persist) return absl::OkStatus();
  JobSnapshot snapshot;
  {
    absl::MutexLock lock(&mu_);
    snapshot = {job->sequence, job->record};
  }
  absl::Status s =
      journal_ == nullptr ? absl::OkStatus() : journal_->Write(snapshot.job, snapshot.sequence);
  if (s.ok() && options_.on_persist) options_.on_persist(snapshot.job, snapshot.sequence);
  return s;
}

void SearchJobRunner::Notify(const std::shared_ptr<Job>& job) {
  std::vector<std::function<void()>> listeners;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [token, listener] : job->listeners) listeners.push_back(listener);
  }
  for (const auto& listener : listeners) listener();
}

void SearchJobRunner::Update(const std::shared_ptr<Job>& job,
                             const std::function<void(v1::SearchJob&)>& edit, bool persist) {
  {
    absl::MutexLock lock(&mu_);
    edit(job->record);
    ++job->sequence;
  }
  if (persist) {
    absl::Status s = Persist(job);
    if (!s.ok()) {
      spdlog::error("event=job_persist_failed job_id={} error={}", job->record.job_id(),
                    runtime::LogValue(std::string(s.message())));
    }
  }
  Notify(job);
}

void SearchJobRunner::JobThread() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !queue_.empty(); };
      absl::MutexLock lock(&mu_, absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping
      job = queue_.front();
      queue_.pop_front();
      if (job->record.state() != v1::SEARCH_JOB_QUEUED) continue;
      --queued_;
      ++running_;
      UpdateGaugesLocked();
      job->record.set_state(v1::SEARCH_JOB_RUNNING);
      ToTimestamp(absl::Now(), job->record.mutable_start_time());
      job->record.mutable_progress()->set_phase(v1::SEARCH_PHASE_CALIBRATION);
      ++job->sequence;
    }
    absl::Status s = Persist(job);
    if (!s.ok())
      spdlog::error("event=job_persist_failed error={}",
                    runtime::LogValue(std::string(s.message())));
    Notify(job);
    Run(job);
  }
}

void SearchJobRunner::Run(const std::shared_ptr<Job>& job) {
  std::string job_id;
  bool publish = false;
  {
    absl::MutexLock lock(&mu_);
    job_id = job->record.job_id();
    publish = job->record.request().publish();
  }
  // Set by Create, unchanged until this job ends.
  const CatalogModel& model = *job->model;
  const PreparedSearch& search = job->search;
  spdlog::info("event=job_started job_id={} model={} threads={}", job_id, model.name,
               search_threads_);
  const absl::Time start = absl::Now();
  absl::Time greedy_start = start;
  auto backend = MakeCpuBackend(SearchBackendOptions(search_threads_, search.selection));

  SearchHooks hooks;
  hooks.cancel = &job->cancel;
  hooks.on_phase = [&](SearchPhase phase) {
    if (phase == SearchPhase::kGreedy) greedy_start = absl::Now();
    Update(
        job,
        [&](v1::SearchJob& r) {
          v1::SearchProgress* p = r.mutable_progress();
          p->set_elapsed_seconds(absl::ToDoubleSeconds(absl::Now() - start));
          p->set_phase(ToProto(phase));
          if (phase == SearchPhase::kGreedy) {
            StartGreedyProgress(model.model->config().n_layers, p);
          }
        },
        /*persist=*/false);
  };
  hooks.progress = [&](const GreedyProgress& g) {
    const absl::Time now = absl::Now();
    const double eta = SearchEtaSeconds(g, absl::ToDoubleSeconds(now - greedy_start));
    Update(
        job,
        [&](v1::SearchJob& r) {
          v1::SearchProgress* p = r.mutable_progress();
          ToProto(g, p);
          p->set_elapsed_seconds(absl::ToDoubleSeconds(now - start));
          p->set_eta_seconds(eta);
        },
        /*persist=*/false);
  };
  auto result = CatchExceptions("the search", [&]() -> absl::StatusOr<StrategySearchResult> {
    if (job->drop_sets.has_value()) {
      return RunDropAsSearch(*model.model, *job->drop_sets, search_threads_,
                             search.options.target_layers, job->drop_substitutes, hooks);
    }
    if (search.plan.has_value()) {
      // The KV plan search measures (and records) the held-out quality as it trims.
      return RunKvPlanAsSearch(*model.model, search.calibration, *job->heldout, search_threads_,
                               *search.plan, hooks, &baselines_);
    }
    return RunStrategySearch(*model.model, *backend, search.calibration, search.selection, hooks);
  });
  if (result.ok() && job->heldout.has_value() && !search.plan.has_value()) {
    // Quality on record: held-out perplexity with and without the strategy, written into the
    // strategy's provenance (so into the result and the published record).
    Update(
        job,
        [&](v1::SearchJob& r) {
          r.mutable_progress()->set_phase(v1::SEARCH_PHASE_QUALITY);
          r.mutable_progress()->set_elapsed_seconds(absl::ToDoubleSeconds(absl::Now() - start));
          r.mutable_progress()->set_eta_seconds(-1);
        },
        /*persist=*/false);
    auto quality = CatchExceptions("the held-out quality", [&] {
      return MeasureHeldoutQuality(*model.model, *job->heldout, search_threads_, result->strategy,
                                   result->calibration_score, &job->cancel, &baselines_);
    });
    if (quality.ok()) {
      auto measured = std::make_shared<SharingStrategy>(*result->strategy);
      RecordQuality(*quality, &measured->provenance());
      result->strategy = std::move(measured);
    } else {
      result = absl::Status(quality.status().code(),
                            absl::StrFormat("held-out quality: %s", quality.status().message()));
    }
  }

  v1::SearchJobState state = v1::SEARCH_JOB_SUCCEEDED;
  absl::Status error;
  v1::SearchResult out;
  if (!result.ok()) {
    state = v1::SEARCH_JOB_FAILED;
    error = result.status();
    if (result.status().code() == absl::StatusCode::kCancelled && job->cancel.load()) {
      absl::MutexLock lock(&mu_);
      error = absl::Status(job->stop_code,
                           absl::StrFormat("%s: %s", job->stop_reason, result.status().message()));
      if (job->stop_code == absl::StatusCode::kCancelled) state = v1::SEARCH_JOB_CANCELLED;
    }
  } else {
    ToProto(*result, &out);
    if (metrics_ != nullptr) metrics_->pairs_scored.Increment(double(out.pairs_scored()));
    if (publish) {
      Update(
          job,
          [](v1::SearchJob& r) { r.mutable_progress()->set_phase(v1::SEARCH_PHASE_PUBLISHING); },
          /*persist=*/false);
      // A drop search's substitutes are stored before the record that names them.
      absl::Status blob = absl::OkStatus();
      if (const auto& p = result->strategy->projections(); p != nullptr) {
        blob = store_->PutProjections(p);
      }
      auto published = blob.ok() ? store_->Publish(result->strategy, {model.name, job_id})
                                 : absl::StatusOr<PublishOutcome>(blob);
      if (published.ok()) {
        ToProto(published->record, out.mutable_published());
        if (published->created && metrics_ != nullptr) {
          metrics_->strategies_published.Increment();
          metrics_->strategy_records.Set(double(store_->List("").size()));
        }
      } else {
        state = v1::SEARCH_JOB_FAILED;
        error = absl::Status(published.status().code(),
                             absl::StrFormat("the search succeeded but publishing failed: %s",
                                             published.status().message()));
      }
    }
  }

  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  Update(
      job,
      [&](v1::SearchJob& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        EndJob(state, error, absl::Now(), &r);
        r.mutable_progress()->set_elapsed_seconds(seconds);
        if (result.ok()) {
          FinalProgress(*result, r.mutable_progress());
          *r.mutable_result() = out;  // kept on failure too: a failed publish still has it
        }
        --running_;
        UpdateGaugesLocked();
      },
      /*persist=*/true);
  {
    absl::MutexLock lock(&mu_);
    job->model.reset();
    job->search = PreparedSearch();
    job->heldout.reset();
    job->drop_sets.reset();
  }
  if (metrics_ != nullptr) {
    metrics_->jobs(SearchJobStateName(state)).Increment();
    metrics_->job_seconds.Observe(seconds);
  }
  spdlog::info("event=job_done job_id={} state={} seconds={:.2f} error={}", job_id,
               SearchJobStateName(state), seconds, runtime::LogValue(std::string(error.message())));
}

}  // namespace kvshare
