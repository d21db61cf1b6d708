#include "search_service/server/job_journal.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>

#include "absl/strings/match.h"
#include "common/util/file.h"
#include "google/protobuf/util/json_util.h"
#include "spdlog/spdlog.h"

namespace kvshare {

absl::StatusOr<std::unique_ptr<JobJournal>> JobJournal::Open(const std::string& dir) {
  absl::Status s = MakeDirectoryDurably(dir);
  if (!s.ok()) return s;
  auto lock = DirectoryLock::Acquire(dir);
  if (!lock.ok()) return lock.status();
  return std::unique_ptr<JobJournal>(new JobJournal(dir, std::move(*lock)));
}

std::vector<v1::SearchJob> JobJournal::ReadAll() {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir_.c_str())) {
    while (dirent* e = ::readdir(d)) names.push_back(e->d_name);
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  std::vector<v1::SearchJob> jobs;
  for (const std::string& name : names) {
    const std::string path = dir_ + "/" + name;
    if (absl::StrContains(name, ".tmp.")) {
      ::unlink(path.c_str());  // an interrupted rewrite; the previous record is in place
      continue;
    }
    if (!absl::EndsWith(name, ".json")) continue;
    auto text = ReadFileToString(path);
    v1::SearchJob job;
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = true;
    if (!text.ok() || !google::protobuf::util::JsonStringToMessage(*text, &job, options).ok() ||
        job.job_id() + ".json" != name) {
      spdlog::error("event=job_record_unreadable path={}", path);
      continue;
    }
    jobs.push_back(std::move(job));
  }
  return jobs;
}

absl::Status JobJournal::Write(const v1::SearchJob& job, uint64_t sequence) {
  absl::MutexLock lock(&mu_);
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

}  // namespace kvshare
