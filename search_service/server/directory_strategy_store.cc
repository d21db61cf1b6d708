#include "search_service/server/directory_strategy_store.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/limits.h"
#include "common/util/excerpt.h"
#include "common/util/file.h"
#include "common/util/json_fields.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

using json = nlohmann::json;

constexpr char kRecordFormat[] = "kvshare.strategy_record.v1";
constexpr char kDeprecationFormat[] = "kvshare.strategy_deprecation.v1";
// Version numbers fit the 8 digits of the file names.
constexpr uint64_t kMaxVersion = 99999999;

std::string Rfc3339(absl::Time t) {
  return absl::FormatTime(absl::RFC3339_full, t, absl::UTCTimeZone());
}

// An RFC 3339 time field, required.
bool TimeField(JsonFields& f, const char* key, absl::Time* out) {
  std::string text, err;
  if (!f.String(key, Field::kRequired, kMaxNameBytes, &text)) return false;
  if (!absl::ParseTime(absl::RFC3339_full, text, out, &err)) {
    return f.Fail(key, "an RFC 3339 time");
  }
  return true;
}

std::string VersionFileName(uint64_t version, const char* suffix) {
  return absl::StrFormat("v%08d%s", version, suffix);
}

// "v00000003.json" -> 3, with `suffix` ".json" or ".deprecated.json"; 0 when not that shape.
uint64_t ParseVersionFileName(const std::string& name, const std::string& suffix) {
  if (name.size() != 9 + suffix.size() || name[0] != 'v' || !absl::EndsWith(name, suffix)) {
    return 0;
  }
  uint64_t v = 0;
  if (!absl::SimpleAtoi(name.substr(1, 8), &v)) return 0;
  return v;
}

absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return absl::InternalError(absl::StrFormat("cannot list %s", dir));
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string RecordJson(const StrategyRecord& r) {
  json j;
  j["format"] = kRecordFormat;
  j["model_fingerprint"] = r.model_fingerprint;
  j["model_name"] = r.model_name;
  j["version"] = r.version;
  j["publish_time"] = Rfc3339(r.publish_time);
  j["source_job_id"] = r.source_job_id;
  j["strategy"] = json::parse(r.strategy->ToJson());
  return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

// `path`'s record, its projections read from `blob_dir`; DataLoss naming the path, the field,
// the value and the expectation.
absl::StatusOr<StrategyRecord> ParseRecord(const std::string& text, const std::string& path,
                                           const std::string& blob_dir) {
  const std::string where = absl::StrCat("strategy record ", path);
  auto parsed = ParseJsonObject(text, where);
  if (!parsed.ok()) return absl::DataLossError(parsed.status().message());
  JsonFields f(*parsed, where);
  StrategyRecord r;
  std::string format;
  if (f.String("format", Field::kRequired, kMaxNameBytes, &format) && format != kRecordFormat) {
    f.Fail("format", absl::StrCat("\"", kRecordFormat, "\""));
  }
  f.Uint("version", Field::kRequired, 1, kMaxVersion, &r.version);
  f.String("model_fingerprint", Field::kRequired, kMaxIdBytes, &r.model_fingerprint);
  f.String("model_name", Field::kOptional, kMaxNameBytes, &r.model_name);
  f.String("source_job_id", Field::kOptional, kMaxNameBytes, &r.source_job_id);
  TimeField(f, "publish_time", &r.publish_time);
  const json* strategy_json = f.Object("strategy", Field::kRequired);
  if (!f.ok()) return absl::DataLossError(f.status().message());
  auto strategy =
      SharingStrategy::FromJson(strategy_json->dump(), absl::StrCat(where, " strategy"), blob_dir);
  if (!strategy.ok()) return absl::DataLossError(strategy.status().message());
  if (strategy->model_fingerprint() != r.model_fingerprint) {
    return absl::DataLossError(
        absl::StrCat(where, ": the strategy's model_fingerprint differs from the record's"));
  }
  r.strategy = std::make_shared<const SharingStrategy>(std::move(*strategy));
  return r;
}

// A deprecation mark: its reason and time (DataLoss as ParseRecord).
absl::Status ParseDeprecation(const std::string& text, const std::string& path,
                              const std::string& fingerprint, uint64_t version, std::string* reason,
                              absl::Time* when) {
  const std::string where = absl::StrCat("deprecation mark ", path);
  auto parsed = ParseJsonObject(text, where);
  if (!parsed.ok()) return absl::DataLossError(parsed.status().message());
  JsonFields f(*parsed, where);
  std::string format;
  if (f.String("format", Field::kRequired, kMaxNameBytes, &format) &&
      format != kDeprecationFormat) {
    f.Fail("format", absl::StrCat("\"", kDeprecationFormat, "\""));
  }
  std::string says_fingerprint;
  uint64_t says_version = 0;
  if (f.String("model_fingerprint", Field::kRequired, kMaxIdBytes, &says_fingerprint) &&
      says_fingerprint != fingerprint) {
    f.Fail("model_fingerprint", absl::StrCat("\"", fingerprint, "\", the file's directory"));
  }
  if (f.Uint("version", Field::kRequired, 1, kMaxVersion, &says_version) &&
      says_version != version) {
    f.Fail("version", absl::StrCat(version, ", the file's name"));
  }
  f.String("reason", Field::kOptional, kMaxTextFieldBytes, reason);
  TimeField(f, "deprecate_time", when);
  if (!f.ok()) return absl::DataLossError(f.status().message());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<DirectoryStrategyStore>> DirectoryStrategyStore::Open(
    const std::string& dir) {
  absl::Status s = MakeDirectoryDurably(dir);
  if (!s.ok()) return s;
  auto lock = DirectoryLock::Acquire(dir);
  if (!lock.ok()) return lock.status();
  std::unique_ptr<DirectoryStrategyStore> store(new DirectoryStrategyStore(dir, std::move(*lock)));
  s = store->Load();
  if (!s.ok()) return s;
  return store;
}

std::string DirectoryStrategyStore::RecordPath(const std::string& model_fingerprint,
                                               uint64_t version) const {
  return absl::StrFormat("%s/%s/%s", dir_, model_fingerprint, VersionFileName(version, ".json"));
}

absl::Status DirectoryStrategyStore::Load() {
  absl::MutexLock lock(&mu_);
  auto models = ListDirectory(dir_);
  if (!models.ok()) return models.status();
  size_t removed_temporaries = 0;
  for (const std::string& fingerprint : *models) {
    const std::string model_dir = dir_ + "/" + fingerprint;
    if (fingerprint == "LOCK" || fingerprint == kProjectionsDirName) continue;
    auto names = ListDirectory(model_dir);
    if (!names.ok()) {
      spdlog::warn("event=store_skip path={} reason=\"not a model directory\"", model_dir);
      continue;
    }
    std::map<uint64_t, std::string> records, deprecations;
    for (const std::string& name : *names) {
      const std::string path = model_dir + "/" + name;
      if (absl::StrContains(name, ".tmp.")) {
        // A write a crash interrupted before its rename: it was never answered, so it was
        // never published.
        ::unlink(path.c_str());
        ++removed_temporaries;
      } else if (uint64_t v = ParseVersionFileName(name, ".json")) {
        records[v] = path;
      } else if (uint64_t v = ParseVersionFileName(name, ".deprecated.json")) {
        deprecations[v] = path;
      } else {
        spdlog::warn("event=store_skip path={} reason=\"not a record\"", path);
      }
    }
    uint64_t expected = 1;
    for (const auto& [version, path] : records) {
      if (version != expected) {
        return absl::DataLossError(absl::StrFormat(
            "strategy store %s: model %s has version %d but no version %d (versions are dense)",
            dir_, fingerprint, version, expected));
      }
      ++expected;
      auto text = ReadFileToString(path, kMaxRecordFileBytes);
      if (!text.ok()) {
        return absl::DataLossError(
            absl::StrFormat("strategy record %s: %s", path, text.status().message()));
      }
      auto record = ParseRecord(*text, path, ProjectionsDir());
      if (!record.ok()) return record.status();
      if (record->version != version || record->model_fingerprint != fingerprint) {
        return absl::DataLossError(absl::StrFormat(
            "strategy record %s: its fields model_fingerprint and version say %s version %d; the "
            "file's place says %s version %d",
            path, Excerpt(record->model_fingerprint), record->version, Excerpt(fingerprint),
            version));
      }
      absl::Status s = index_.Add(std::move(*record));
      if (!s.ok()) {
        return absl::DataLossError(absl::StrFormat("strategy record %s: %s", path, s.message()));
      }
    }
    for (const auto& [version, path] : deprecations) {
      if (index_.Find(fingerprint, version) == nullptr) {
        return absl::DataLossError(absl::StrFormat("deprecation mark %s: no such version", path));
      }
      auto text = ReadFileToString(path, kMaxRecordFileBytes);
      if (!text.ok()) {
        return absl::DataLossError(
            absl::StrFormat("deprecation mark %s: %s", path, text.status().message()));
      }
      std::string reason;
      absl::Time when;
      absl::Status parsed = ParseDeprecation(*text, path, fingerprint, version, &reason, &when);
      if (!parsed.ok()) return parsed;
      index_.MarkDeprecated(fingerprint, version, reason, when);
    }
  }
  spdlog::info("event=strategy_store_opened dir={} records={} removed_temporaries={}", dir_,
               index_.size(), removed_temporaries);
  return absl::OkStatus();
}

absl::StatusOr<PublishOutcome> DirectoryStrategyStore::Publish(
    std::shared_ptr<const SharingStrategy> strategy, const PublishInfo& info) {
  absl::Status s = StrategyIndex::CheckPublishable(strategy.get());
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (const StrategyRecord* existing = index_.FindById(strategy->id())) {
    return PublishOutcome{*existing, false};
  }
  if (strategy->projections() != nullptr) {
    // The blob is durable before the record that names it.
    s = PutProjections(strategy->projections());
    if (!s.ok()) return s;
  }
  StrategyRecord record;
  record.model_fingerprint = strategy->model_fingerprint();
  record.model_name = info.model_name;
  record.version = index_.NextVersion(record.model_fingerprint);
  record.strategy = std::move(strategy);
  // Whole seconds, so the time written reads back identical.
  record.publish_time = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()));
  record.source_job_id = info.source_job_id;
  if (record.version == 1) {
    s = MakeDirectoryDurably(dir_ + "/" + record.model_fingerprint);
    if (!s.ok()) return s;
  }
  // Durable before it is indexed (and so before anyone can see or be told the version).
  s = WriteFileAtomically(RecordPath(record.model_fingerprint, record.version), RecordJson(record));
  if (!s.ok()) return s;
  s = index_.Add(record);
  if (!s.ok()) return s;
  return PublishOutcome{std::move(record), true};
}

absl::StatusOr<StrategyRecord> DirectoryStrategyStore::Get(const std::string& model_fingerprint,
                                                           uint64_t version) const {
  absl::MutexLock lock(&mu_);
  return index_.Get(model_fingerprint, version);
}

absl::StatusOr<StrategyRecord> DirectoryStrategyStore::GetById(
    const std::string& strategy_id) const {
  absl::MutexLock lock(&mu_);
  return index_.GetById(strategy_id);
}

std::vector<StrategyRecord> DirectoryStrategyStore::List(
    const std::string& model_fingerprint) const {
  absl::MutexLock lock(&mu_);
  return index_.List(model_fingerprint);
}

absl::StatusOr<StrategyRecord> DirectoryStrategyStore::Deprecate(
    const std::string& model_fingerprint, uint64_t version, const std::string& reason) {
  absl::MutexLock lock(&mu_);
  const StrategyRecord* r = index_.Find(model_fingerprint, version);
  if (r == nullptr) return StrategyIndex::NotFoundVersion(model_fingerprint, version);
  if (r->deprecated) return *r;
  const absl::Time when = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()));
  json j;
  j["format"] = kDeprecationFormat;
  j["model_fingerprint"] = model_fingerprint;
  j["version"] = version;
  j["reason"] = reason;
  j["deprecate_time"] = Rfc3339(when);
  absl::Status s =
      WriteFileAtomically(absl::StrFormat("%s/%s/%s", dir_, model_fingerprint,
                                          VersionFileName(version, ".deprecated.json")),
                          j.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
  if (!s.ok()) return s;
  index_.MarkDeprecated(model_fingerprint, version, reason, when);
  return *index_.Find(model_fingerprint, version);
}

absl::Status DirectoryStrategyStore::PutProjections(
    std::shared_ptr<const OutputProjections> projections) {
  if (projections == nullptr) return absl::InvalidArgumentError("projections is null");
  const std::string path = absl::StrCat(ProjectionsDir(), "/", projections->BlobFileName());
  if (::access(path.c_str(), F_OK) == 0) return absl::OkStatus();  // content-addressed
  absl::Status s = MakeDirectoryDurably(ProjectionsDir());
  if (!s.ok()) return s;
  // Written to a temporary, fsynced, renamed: a crash leaves the whole blob or none.
  return WriteFileAtomically(path, projections->blob());
}

absl::StatusOr<std::shared_ptr<const OutputProjections>> DirectoryStrategyStore::GetProjections(
    const ProjectionsHeader& header) const {
  absl::Status s = CheckProjectionsHeader(header, "projections");
  if (!s.ok()) return s;
  const std::string path = absl::StrCat(ProjectionsDir(), "/", header.FileName());
  if (::access(path.c_str(), F_OK) != 0) return ProjectionsNotFound(header);
  auto blob = ReadFileToString(path, header.blob_bytes() + 1);
  if (!blob.ok()) {
    return absl::DataLossError(
        absl::StrFormat("projections blob %s: %s", path, blob.status().message()));
  }
  auto p = ProjectionsFromBlob(header, std::move(*blob));
  if (!p.ok()) {
    return absl::DataLossError(
        absl::StrFormat("projections blob %s: %s", path, p.status().message()));
  }
  return p;
}

}  // namespace kvshare
