#include "search_service/server/etcd_job_mirror.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/json_util.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

bool Unfinished(v1::SearchJobState state) {
  return state == v1::SEARCH_JOB_QUEUED || state == v1::SEARCH_JOB_RUNNING;
}

absl::StatusOr<std::string> ToJson(const v1::SearchJob& job) {
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  std::string json;
  auto s = google::protobuf::util::MessageToJsonString(job, &json, print);
  if (!s.ok()) return absl::InternalError(s.ToString());
  return json;
}

}  // namespace

std::string EtcdJobMirror::OwnerOf(const std::string& replica_id) {
  return absl::StrReplaceAll(replica_id, {{"/", "_"}});
}

EtcdJobMirror::EtcdJobMirror(std::shared_ptr<const EtcdClient> client, EtcdJobMirrorOptions options)
    : client_(std::move(client)),
      options_(std::move(options)),
      jobs_prefix_(options_.prefix + "/jobs/"),
      replicas_prefix_(options_.prefix + "/replicas/") {
  thread_ = std::thread(&EtcdJobMirror::Run, this);
}

EtcdJobMirror::~EtcdJobMirror() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
  Flush();
}

void EtcdJobMirror::SetReplica(std::string replica_id, std::function<int64_t()> lease_of,
                               std::function<bool()> leading) {
  absl::MutexLock cycle(&cycle_mu_);
  absl::MutexLock lock(&mu_);
  owner_ = OwnerOf(replica_id);
  replica_id_ = std::move(replica_id);
  lease_of_ = std::move(lease_of);
  leading_ = std::move(leading);
}

std::string EtcdJobMirror::replica_key() const {
  absl::MutexLock lock(&mu_);
  return owner_.empty() ? "" : replicas_prefix_ + owner_;
}

std::string EtcdJobMirror::job_key(const std::string& job_id) const {
  absl::MutexLock lock(&mu_);
  return owner_.empty() ? "" : jobs_prefix_ + owner_ + "/" + job_id;
}

void EtcdJobMirror::Record(const v1::SearchJob& job, uint64_t sequence) {
  absl::MutexLock lock(&mu_);
  auto written = written_.find(job.job_id());
  if (written != written_.end() && written->second >= sequence) return;
  Pending& p = pending_[job.job_id()];
  if (p.sequence > sequence) return;
  p.job = job;
  p.sequence = sequence;
}

bool EtcdJobMirror::WaitUntilFlushed(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto empty = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return pending_.empty(); };
  return mu_.AwaitWithTimeout(absl::Condition(&empty), timeout);
}

void EtcdJobMirror::Run() {
  absl::Time swept = absl::InfinitePast();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.flush_every);
      if (stop_) return;
    }
    absl::MutexLock cycle(&cycle_mu_);
    Flush();
    std::function<bool()> leading;
    {
      absl::MutexLock lock(&mu_);
      leading = leading_;
    }
    if (leading && leading() && absl::Now() - swept >= options_.sweep_every) {
      swept = absl::Now();
      auto failed = FailOrphans();
      if (!failed.ok()) {
        spdlog::warn("event=job_sweep_failed error=\"{}\"", std::string(failed.status().message()));
      }
    }
  }
}

void EtcdJobMirror::Flush() {
  std::function<int64_t()> lease_of;
  std::string replica_id, replica_key, jobs_of_owner;
  int64_t registered;
  std::map<std::string, Pending> batch;
  {
    absl::MutexLock lock(&mu_);
    if (owner_.empty()) return;
    lease_of = lease_of_;
    replica_id = replica_id_;
    replica_key = replicas_prefix_ + owner_;
    jobs_of_owner = jobs_prefix_ + owner_ + "/";
    registered = registered_lease_;
    batch = pending_;
  }
  const int64_t lease = lease_of ? lease_of() : 0;
  if (lease == 0) return;  // no job record before the owner key (see the header)
  if (registered != lease) {
    if (!client_->Put(replica_key, replica_id, lease).ok()) return;
    absl::MutexLock lock(&mu_);
    registered_lease_ = lease;
  }
  for (auto& [id, p] : batch) {
    v1::SearchJob job = p.job;
    auto json = ToJson(job);
    if (json.ok() && json->size() > kMaxMirroredJobBytes) {
      job.mutable_result()->clear_strategy();
      json = ToJson(job);
    }
    if (!json.ok()) {
      spdlog::error("event=job_mirror_failed job_id={} error=\"{}\"", id,
                    std::string(json.status().message()));
    } else if (!client_->Put(jobs_of_owner + id, *json).ok()) {
      return;  // etcd unreachable: the rest stays queued for the next flush
    }
    absl::MutexLock lock(&mu_);
    written_[id] = std::max(written_[id], p.sequence);
    auto it = pending_.find(id);
    if (it != pending_.end() && it->second.sequence <= p.sequence) pending_.erase(it);
  }
}

absl::StatusOr<std::map<std::string, std::vector<v1::SearchJob>>> EtcdJobMirror::ReadAll() const {
  auto range = client_->GetPrefix(jobs_prefix_);
  if (!range.ok()) return range.status();
  std::map<std::string, std::vector<v1::SearchJob>> out;
  for (const EtcdKeyValue& kv : range->kvs) {
    const std::string rest = kv.key.substr(jobs_prefix_.size());
    const size_t slash = rest.rfind('/');
    if (slash == std::string::npos) continue;
    v1::SearchJob job;
    google::protobuf::util::JsonParseOptions parse;
    parse.ignore_unknown_fields = true;
    if (!google::protobuf::util::JsonStringToMessage(kv.value, &job, parse).ok()) {
      spdlog::warn("event=job_mirror_unreadable key={}", kv.key);
      continue;
    }
    out[rest.substr(0, slash)].push_back(std::move(job));
  }
  return out;
}

std::string EtcdJobMirror::Leader() const {
  absl::MutexLock lock(&mu_);
  return replica_id_.empty() ? "(unnamed)" : replica_id_;
}

absl::StatusOr<std::vector<v1::SearchJob>> EtcdJobMirror::FailOrphans() {
  auto jobs = client_->GetPrefix(jobs_prefix_);
  if (!jobs.ok()) return jobs.status();
  auto replicas = client_->GetPrefix(replicas_prefix_);
  if (!replicas.ok()) return replicas.status();
  std::map<std::string, bool> alive;
  for (const EtcdKeyValue& kv : replicas->kvs) alive[kv.key.substr(replicas_prefix_.size())] = true;
  std::vector<v1::SearchJob> failed;
  const absl::Time now = absl::Now();
  for (const EtcdKeyValue& kv : jobs->kvs) {
    const std::string rest = kv.key.substr(jobs_prefix_.size());
    const size_t slash = rest.rfind('/');
    if (slash == std::string::npos) continue;
    const std::string owner = rest.substr(0, slash);
    if (alive.count(owner) != 0) continue;
    v1::SearchJob job;
    google::protobuf::util::JsonParseOptions parse;
    parse.ignore_unknown_fields = true;
    if (!google::protobuf::util::JsonStringToMessage(kv.value, &job, parse).ok()) continue;
    if (!Unfinished(job.state())) continue;
    const bool was_running = job.state() == v1::SEARCH_JOB_RUNNING;
    job.set_state(v1::SEARCH_JOB_FAILED);
    job.set_error_code(int(absl::StatusCode::kAborted));
    job.set_error(absl::StrFormat(
        "the search-service replica %s that held this job died while it was %s (its etcd lease "
        "expired; found by the leader %s at %s); its search is lost: create the job again",
        owner, was_running ? "running" : "queued", Leader(),
        absl::FormatTime(absl::RFC3339_sec, now, absl::UTCTimeZone())));
    job.mutable_end_time()->set_seconds(absl::ToUnixSeconds(now));
    auto json = ToJson(job);
    if (!json.ok()) return json.status();
    auto txn = client_->Txn({EtcdCompare::ModRevisionIs(kv.key, kv.mod_revision),
                             EtcdCompare::Absent(replicas_prefix_ + owner)},
                            {EtcdOp::Put(kv.key, *json)}, {});
    if (!txn.ok()) return txn.status();
    if (!txn->succeeded) continue;  // the owner came back, or wrote meanwhile
    spdlog::warn("event=orphaned_job_failed job_id={} owner={} was={} key={}", job.job_id(), owner,
                 was_running ? "running" : "queued", kv.key);
    failed.push_back(std::move(job));
  }
  return failed;
}

}  // namespace kvshare
