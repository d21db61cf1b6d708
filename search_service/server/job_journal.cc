#include "search_service/server/job_journal.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "common/limits.h"
#include "common/util/excerpt.h"
#include "common/util/file.h"
#include "google/protobuf/util/json_util.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

constexpr char kQuarantine[] = "quarantine";

std::vector<std::string> ListNames(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

// "job-000007.json" or a quarantined "job-000007.json.2" -> "job-000007".
std::string JobIdOfFileName(const std::string& name) {
  const size_t dot = name.find(".json");
  return dot == std::string::npos ? "" : name.substr(0, dot);
}

// Why `text`, read from the file `name`, is not a record; OK when it is one.
absl::Status ParseRecord(const absl::StatusOr<std::string>& text, const std::string& name,
                         v1::SearchJob* job) {
  if (!text.ok()) return text.status();
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;
  auto parsed = google::protobuf::util::JsonStringToMessage(*text, job, options);
  if (!parsed.ok()) {
    return absl::DataLossError(
        absl::StrFormat("not a kvshare.v1.SearchJob: %s", Excerpt(parsed.ToString(), 256)));
  }
  if (job->job_id() + ".json" != name) {
    return absl::DataLossError(
        absl::StrFormat("job_id \"%s\" differs from the file name", Excerpt(job->job_id())));
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t JobJournal::JobNumber(const std::string& job_id) {
  // Numbers the runner could reach (it counts up from 1); a larger one, planted in a file
  // name, must not wrap the next number around to ids that are taken.
  constexpr uint64_t kLargest = 999999999999999;
  uint64_t n = 0;
  if (job_id.size() > 4 && job_id.compare(0, 4, "job-") == 0) {
    if (!absl::SimpleAtoi(job_id.substr(4), &n) || n > kLargest) n = 0;
  }
  return n;
}

absl::StatusOr<std::unique_ptr<JobJournal>> JobJournal::Open(const std::string& dir) {
  absl::Status s = MakeDirectoryDurably(dir);
  if (!s.ok()) return s;
  auto lock = DirectoryLock::Acquire(dir);
  if (!lock.ok()) return lock.status();
  return std::unique_ptr<JobJournal>(new JobJournal(dir, std::move(*lock)));
}

absl::StatusOr<std::string> JobJournal::Quarantine(const std::string& name) {
  const std::string qdir = dir_ + "/" + kQuarantine;
  absl::Status s = MakeDirectoryDurably(qdir);
  if (!s.ok()) return s;
  const std::string from = dir_ + "/" + name;
  for (int n = 0; n < 1000; ++n) {
    const std::string to =
        n == 0 ? absl::StrFormat("%s/%s", qdir, name) : absl::StrFormat("%s/%s.%d", qdir, name, n);
    // link() fails rather than replace an earlier quarantined file of the same name.
    if (::link(from.c_str(), to.c_str()) == 0) {
      if (::unlink(from.c_str()) != 0) {
        return absl::InternalError(
            absl::StrFormat("cannot remove %s: %s", from, std::strerror(errno)));
      }
      SyncDirectory(qdir).IgnoreError();
      SyncDirectory(dir_).IgnoreError();
      return to;
    }
    if (errno != EEXIST) {
      return absl::InternalError(
          absl::StrFormat("cannot move %s to %s: %s", from, to, std::strerror(errno)));
    }
  }
  return absl::ResourceExhaustedError(
      absl::StrFormat("%s/%s has 1000 quarantined copies already", qdir, name));
}

std::vector<v1::SearchJob> JobJournal::ReadAll() {
  absl::MutexLock lock(&mu_);
  for (const std::string& name : ListNames(dir_ + "/" + kQuarantine)) {
    const std::string id = JobIdOfFileName(name);
    if (id.empty()) continue;
    quarantined_ids_.insert(id);
    highest_job_number_ = std::max(highest_job_number_, JobNumber(id));
  }
  std::vector<v1::SearchJob> jobs;
  for (const std::string& name : ListNames(dir_)) {
    const std::string path = dir_ + "/" + name;
    if (absl::StrContains(name, ".tmp.")) {
      ::unlink(path.c_str());  // an interrupted rewrite; the previous record is in place
      continue;
    }
    if (!absl::EndsWith(name, ".json")) continue;
    const std::string id = JobIdOfFileName(name);
    highest_job_number_ = std::max(highest_job_number_, JobNumber(id));
    v1::SearchJob job;
    absl::Status s = ParseRecord(ReadFileToString(path, kMaxJobRecordBytes), name, &job);
    if (s.ok()) {
      jobs.push_back(std::move(job));
      continue;
    }
    auto moved = Quarantine(name);
    if (!moved.ok()) {
      // Left in place and still reserved: nothing is lost, and Write refuses the id.
      spdlog::error("event=job_record_quarantine_failed path={} reason={} error={}", path,
                    runtime::LogValue(std::string(s.message())),
                    runtime::LogValue(std::string(moved.status().message())));
    } else {
      spdlog::error("event=job_record_quarantined path={} moved_to={} reason={}", path, *moved,
                    runtime::LogValue(std::string(s.message())));
    }
    quarantined_.push_back({id, path, moved.ok() ? *moved : path, std::string(s.message())});
    quarantined_ids_.insert(id);
  }
  return jobs;
}

absl::Status JobJournal::Write(const v1::SearchJob& job, uint64_t sequence) {
  absl::MutexLock lock(&mu_);
  if (quarantined_ids_.count(job.job_id()) > 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("job %s has a quarantined record in %s/%s; its id is not reused",
                        Excerpt(job.job_id()), dir_, kQuarantine));
  }
  auto it = written_.find(job.job_id());
  if (it != written_.end() && it->second >= sequence) return absl::OkStatus();
  std::string text;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  auto s = google::protobuf::util::MessageToJsonString(job, &text, options);
  if (!s.ok()) return absl::InternalError(s.ToString());
  absl::Status written = WriteFileAtomically(dir_ + "/" + job.job_id() + ".json", text + "\n");
  if (!written.ok()) return written;
  written_[job.job_id()] = sequence;
  return absl::OkStatus();
}

std::vector<QuarantinedJobRecord> JobJournal::quarantined() const {
  absl::MutexLock lock(&mu_);
  return quarantined_;
}

uint64_t JobJournal::highest_job_number() const {
  absl::MutexLock lock(&mu_);
  return highest_job_number_;
}

}  // namespace kvshare
