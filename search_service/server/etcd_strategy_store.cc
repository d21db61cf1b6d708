#include "search_service/server/etcd_strategy_store.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/json_util.h"
#include "search_service/server/registry_wire.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

constexpr char kDeprecatedSuffix[] = ".deprecated";
constexpr char kCounterName[] = "version";
constexpr int kMaxPublishAttempts = 64;
// A projections blob is stored in pieces this large, under etcd's default request limit
// (1.5 MiB, --max-request-bytes) with room for the gateway's base64.
constexpr size_t kEtcdPieceBytes = size_t{512} << 10;
constexpr char kProjectionsSizeName[] = "size";

// "v00000003" -> 3 (with `suffix` "" or ".deprecated"); 0 when not that shape.
uint64_t ParseVersionName(absl::string_view name, absl::string_view suffix) {
  if (name.size() != 9 + suffix.size() || name[0] != 'v' || !absl::EndsWith(name, suffix)) {
    return 0;
  }
  uint64_t v = 0;
  if (!absl::SimpleAtoi(name.substr(1, 8), &v)) return 0;
  return v;
}

bool IsFingerprint(const std::string& fp) {
  bool hex = fp.size() == 64;
  for (char c : fp) hex = hex && ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  return hex;
}

std::string ToJson(const v1::StrategyRecord& msg) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(msg, &out, options);
  return out;
}

absl::StatusOr<v1::StrategyRecord> ParseRecordProto(const EtcdKeyValue& kv) {
  v1::StrategyRecord msg;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto s = google::protobuf::util::JsonStringToMessage(kv.value, &msg, options);
  if (!s.ok()) {
    return absl::DataLossError(
        absl::StrFormat("strategy record at etcd key %s does not parse: %s", kv.key, s.ToString()));
  }
  return msg;
}

// The record at `kv`, checked to be version `version` of `fingerprint`.
// Its projections (when any) come from `resolve`.
absl::StatusOr<StrategyRecord> ParseRecord(const EtcdKeyValue& kv, const std::string& fingerprint,
                                           uint64_t version, const ProjectionsResolver& resolve) {
  auto msg = ParseRecordProto(kv);
  if (!msg.ok()) return msg.status();
  auto record = FromProto(*msg, resolve);
  if (!record.ok()) {
    // etcd out of reach while reading the record's projections: not damage.
    if (absl::IsUnavailable(record.status())) return record.status();
    return absl::DataLossError(
        absl::StrFormat("strategy record at etcd key %s: %s", kv.key, record.status().message()));
  }
  if (record->model_fingerprint != fingerprint || record->version != version) {
    return absl::DataLossError(
        absl::StrFormat("strategy record at etcd key %s says model %s version %d", kv.key,
                        record->model_fingerprint.substr(0, 16), record->version));
  }
  record->deprecated = false;  // marks live in their own key
  return record;
}

absl::Status MarkFrom(StrategyIndex& index, const EtcdKeyValue& kv, const std::string& fingerprint,
                      uint64_t version) {
  auto msg = ParseRecordProto(kv);
  if (!msg.ok()) return msg.status();
  const StrategyRecord* r = index.Find(fingerprint, version);
  if (r == nullptr) {
    return absl::DataLossError(
        absl::StrFormat("deprecation mark at etcd key %s: no such version", kv.key));
  }
  if (!r->deprecated) {
    index.MarkDeprecated(fingerprint, version, msg->deprecation_reason(),
                         FromTimestamp(msg->deprecate_time()));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ParseCounter(const EtcdKeyValue& kv) {
  uint64_t v = 0;
  if (!absl::SimpleAtoi(kv.value, &v)) {
    return absl::DataLossError(absl::StrFormat("version counter at etcd key %s is \"%s\"", kv.key,
                                               kv.value.substr(0, 32)));
  }
  return v;
}

}  // namespace

absl::StatusOr<std::unique_ptr<EtcdStrategyStore>> EtcdStrategyStore::Open(
    std::shared_ptr<const EtcdClient> client, const std::string& prefix) {
  std::unique_ptr<EtcdStrategyStore> store(new EtcdStrategyStore(std::move(client), prefix));
  int64_t revision = 0;
  {
    absl::MutexLock lock(&store->mu_);
    absl::Status s = store->LoadAll(&revision);
    if (!s.ok()) return s;
    spdlog::info("event=strategy_store_opened etcd={} prefix={} records={} revision={}",
                 store->client_->endpoints().front(), prefix, store->index_.size(), revision);
  }
  EtcdStrategyStore* raw = store.get();
  store->watch_ = store->client_->Watch(prefix + "/strategies/", revision + 1,
                                        [raw](const EtcdWatchBatch& b) { raw->OnWatch(b); });
  return store;
}

EtcdStrategyStore::~EtcdStrategyStore() { watch_.reset(); }

std::string EtcdStrategyStore::ModelPrefix(const std::string& model_fingerprint) const {
  return absl::StrFormat("%s/strategies/%s/", prefix_, model_fingerprint);
}

std::string EtcdStrategyStore::RecordKey(const std::string& model_fingerprint,
                                         uint64_t version) const {
  return absl::StrFormat("%sv%08d", ModelPrefix(model_fingerprint), version);
}

absl::Status EtcdStrategyStore::ApplyModelKeys(const std::string& fingerprint,
                                               const std::vector<EtcdKeyValue>& kvs) const {
  const std::string model_prefix = ModelPrefix(fingerprint);
  // Keys come ordered: v00000001, v00000001.deprecated, v00000002, ..., version.
  for (const EtcdKeyValue& kv : kvs) {
    absl::string_view name = kv.key;
    if (!absl::ConsumePrefix(&name, model_prefix)) continue;
    if (name == kCounterName) {
      auto value = ParseCounter(kv);
      if (!value.ok()) return value.status();
      if (*value != index_.NextVersion(fingerprint) - 1) {
        return absl::DataLossError(absl::StrFormat(
            "version counter at etcd key %s is %d but the records end at version %d", kv.key,
            *value, index_.NextVersion(fingerprint) - 1));
      }
      counters_[fingerprint] = {*value, kv.mod_revision};
    } else if (uint64_t v = ParseVersionName(name, "")) {
      const uint64_t next = index_.NextVersion(fingerprint);
      if (v < next) continue;
      if (v > next) {
        return absl::DataLossError(absl::StrFormat(
            "etcd key %s: model %s has version %d but no version %d (versions are dense)", kv.key,
            fingerprint.substr(0, 16), v, next));
      }
      auto record = ParseRecord(kv, fingerprint, v, Resolver());
      if (!record.ok()) return record.status();
      absl::Status s = index_.Add(std::move(*record));
      if (!s.ok())
        return absl::DataLossError(absl::StrFormat("etcd key %s: %s", kv.key, s.message()));
    } else if (uint64_t v = ParseVersionName(name, kDeprecatedSuffix)) {
      absl::Status s = MarkFrom(index_, kv, fingerprint, v);
      if (!s.ok()) return s;
    } else {
      spdlog::warn("event=store_skip key={} reason=\"not a record\"", kv.key);
    }
  }
  return absl::OkStatus();
}

absl::Status EtcdStrategyStore::CatchUp(const std::string& fingerprint) const {
  auto range = client_->GetPrefix(ModelPrefix(fingerprint));
  if (!range.ok()) return range.status();
  return ApplyModelKeys(fingerprint, range->kvs);
}

absl::Status EtcdStrategyStore::LoadAll(int64_t* revision) {
  const std::string strategies = prefix_ + "/strategies/";
  auto range = client_->GetPrefix(strategies);
  if (!range.ok()) return range.status();
  *revision = range->revision;
  // Split by model; each model's keys are contiguous and ordered.
  std::map<std::string, std::vector<EtcdKeyValue>> by_model;
  for (EtcdKeyValue& kv : range->kvs) {
    absl::string_view rest = kv.key;
    absl::ConsumePrefix(&rest, strategies);
    const size_t slash = rest.find('/');
    if (slash == absl::string_view::npos) continue;
    by_model[std::string(rest.substr(0, slash))].push_back(std::move(kv));
  }
  for (const auto& [fingerprint, kvs] : by_model) {
    absl::Status s = ApplyModelKeys(fingerprint, kvs);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

void EtcdStrategyStore::OnWatch(const EtcdWatchBatch& batch) {
  absl::MutexLock lock(&mu_);
  if (batch.resync) {
    int64_t revision = 0;
    absl::Status s = LoadAll(&revision);
    if (!s.ok())
      spdlog::error("event=store_resync_failed error={}",
                    runtime::LogValue(std::string(s.message())));
    return;
  }
  const std::string strategies = prefix_ + "/strategies/";
  for (const EtcdEvent& e : batch.events) {
    if (e.deleted) {
      spdlog::warn("event=store_key_deleted key={} (records are never deleted)", e.kv.key);
      continue;
    }
    absl::string_view rest = e.kv.key;
    absl::ConsumePrefix(&rest, strategies);
    const size_t slash = rest.find('/');
    if (slash == absl::string_view::npos) continue;
    const std::string fingerprint(rest.substr(0, slash));
    const absl::string_view name = rest.substr(slash + 1);
    absl::Status s;
    if (name == kCounterName) {
      auto value = ParseCounter(e.kv);
      Counter& c = counters_[fingerprint];
      if (value.ok() && e.kv.mod_revision > c.mod_revision) c = {*value, e.kv.mod_revision};
      s = value.status();
    } else if (uint64_t v = ParseVersionName(name, "")) {
      const uint64_t next = index_.NextVersion(fingerprint);
      if (v == next) {
        auto record = ParseRecord(e.kv, fingerprint, v, Resolver());
        s = record.ok() ? index_.Add(std::move(*record)) : record.status();
      } else if (v > next) {
        s = CatchUp(fingerprint);
      }
    } else if (uint64_t v = ParseVersionName(name, kDeprecatedSuffix)) {
      s = index_.Find(fingerprint, v) != nullptr ? MarkFrom(index_, e.kv, fingerprint, v)
                                                 : CatchUp(fingerprint);
    }
    if (!s.ok()) {
      spdlog::error("event=store_watch_apply_failed key={} error={}", e.kv.key,
                    runtime::LogValue(std::string(s.message())));
    }
  }
}

absl::StatusOr<PublishOutcome> EtcdStrategyStore::Publish(
    std::shared_ptr<const SharingStrategy> strategy, const PublishInfo& info) {
  absl::Status s = StrategyIndex::CheckPublishable(strategy.get());
  if (!s.ok()) return s;
  const std::string& fingerprint = strategy->model_fingerprint();
  const std::string id_key = absl::StrFormat("%s/strategy_ids/%s", prefix_, strategy->id());
  const std::string counter_key = ModelPrefix(fingerprint) + kCounterName;
  if (strategy->projections() != nullptr) {
    // The blob is in etcd before any record names it.
    s = PutProjections(strategy->projections());
    if (!s.ok()) return s;
  }
  for (int attempt = 0; attempt < kMaxPublishAttempts; ++attempt) {
    Counter counter;
    {
      absl::MutexLock lock(&mu_);
      if (const StrategyRecord* existing = index_.FindById(strategy->id())) {
        return PublishOutcome{*existing, false};
      }
      counter = counters_[fingerprint];
    }
    StrategyRecord record;
    record.model_fingerprint = fingerprint;
    record.model_name = info.model_name;
    record.version = counter.value + 1;
    record.strategy = strategy;
    // Whole seconds, as the directory store writes them.
    record.publish_time = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()));
    record.source_job_id = info.source_job_id;
    v1::StrategyRecord msg;
    ToProto(record, &msg);
    auto txn =
        client_->Txn({EtcdCompare::ModRevisionIs(counter_key, counter.mod_revision),
                      EtcdCompare::Absent(id_key)},
                     {EtcdOp::Put(RecordKey(fingerprint, record.version), ToJson(msg)),
                      EtcdOp::Put(counter_key, std::to_string(record.version)),
                      EtcdOp::Put(id_key, absl::StrFormat("%s/%d", fingerprint, record.version))},
                     {EtcdOp::Get(id_key), EtcdOp::Get(counter_key)});
    if (!txn.ok()) return txn.status();
    absl::MutexLock lock(&mu_);
    if (txn->succeeded) {
      Counter& c = counters_[fingerprint];
      if (txn->revision > c.mod_revision) c = {record.version, txn->revision};
      if (index_.NextVersion(fingerprint) == record.version) {
        s = index_.Add(record);
      } else if (index_.NextVersion(fingerprint) < record.version) {
        s = CatchUp(fingerprint);  // the versions before it came from other replicas
      }
      if (!s.ok()) {
        spdlog::warn("event=store_index_behind key={} error={}",
                     RecordKey(fingerprint, record.version),
                     runtime::LogValue(std::string(s.message())));
      }
      return PublishOutcome{std::move(record), true};
    }
    if (txn->gets.size() == 2 && !txn->gets[0].kvs.empty()) {
      // The same content was published meanwhile (by another replica): its record.
      s = CatchUp(fingerprint);
      if (!s.ok()) return s;
      if (const StrategyRecord* existing = index_.FindById(strategy->id())) {
        return PublishOutcome{*existing, false};
      }
      return absl::DataLossError(absl::StrFormat("etcd key %s names \"%s\", which has no record",
                                                 id_key, txn->gets[0].kvs[0].value));
    }
    if (txn->gets.size() == 2 && !txn->gets[1].kvs.empty()) {
      auto value = ParseCounter(txn->gets[1].kvs[0]);
      if (!value.ok()) return value.status();
      Counter& c = counters_[fingerprint];
      if (txn->gets[1].kvs[0].mod_revision > c.mod_revision) {
        c = {*value, txn->gets[1].kvs[0].mod_revision};
      }
    }
  }
  return absl::AbortedError(
      absl::StrFormat("publish to etcd key %s: the version counter kept moving (%d attempts)",
                      counter_key, kMaxPublishAttempts));
}

absl::StatusOr<StrategyRecord> EtcdStrategyStore::Get(const std::string& model_fingerprint,
                                                      uint64_t version) const {
  absl::MutexLock lock(&mu_);
  if (const StrategyRecord* r = index_.Find(model_fingerprint, version)) return *r;
  // Only a key a publish could have written is worth a read.
  if (version == 0 || !IsFingerprint(model_fingerprint)) {
    return StrategyIndex::NotFoundVersion(model_fingerprint, version);
  }
  absl::Status s = CatchUp(model_fingerprint);
  if (!s.ok()) return s;
  return index_.Get(model_fingerprint, version);
}

absl::StatusOr<StrategyRecord> EtcdStrategyStore::GetById(const std::string& strategy_id) const {
  absl::MutexLock lock(&mu_);
  if (const StrategyRecord* r = index_.FindById(strategy_id)) return *r;
  const std::string id_key = absl::StrFormat("%s/strategy_ids/%s", prefix_, strategy_id);
  auto range = client_->Get(id_key);
  if (!range.ok()) return range.status();
  if (!range->kvs.empty()) {
    const std::string& value = range->kvs[0].value;
    const std::string fingerprint = value.substr(0, value.find('/'));
    if (!IsFingerprint(fingerprint)) {
      return absl::DataLossError(absl::StrFormat("etcd key %s names \"%s\", not a model version",
                                                 id_key, value.substr(0, 80)));
    }
    absl::Status s = CatchUp(fingerprint);
    if (!s.ok()) return s;
  }
  return index_.GetById(strategy_id);
}

std::vector<StrategyRecord> EtcdStrategyStore::List(const std::string& model_fingerprint) const {
  absl::MutexLock lock(&mu_);
  return index_.List(model_fingerprint);
}

absl::StatusOr<StrategyRecord> EtcdStrategyStore::Deprecate(const std::string& model_fingerprint,
                                                            uint64_t version,
                                                            const std::string& reason) {
  {
    absl::MutexLock lock(&mu_);
    const StrategyRecord* r = index_.Find(model_fingerprint, version);
    if (r == nullptr && version > 0 && IsFingerprint(model_fingerprint)) {
      absl::Status s = CatchUp(model_fingerprint);
      if (!s.ok()) return s;
      r = index_.Find(model_fingerprint, version);
    }
    if (r == nullptr) return StrategyIndex::NotFoundVersion(model_fingerprint, version);
    if (r->deprecated) return *r;
  }
  v1::StrategyRecord mark;
  mark.set_model_fingerprint(model_fingerprint);
  mark.set_version(version);
  mark.set_deprecated(true);
  mark.set_deprecation_reason(reason);
  ToTimestamp(absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now())),
              mark.mutable_deprecate_time());
  const std::string key = RecordKey(model_fingerprint, version) + kDeprecatedSuffix;
  auto txn = client_->Txn({EtcdCompare::Absent(key)}, {EtcdOp::Put(key, ToJson(mark))},
                          {EtcdOp::Get(key)});
  if (!txn.ok()) return txn.status();
  EtcdKeyValue kv;
  kv.key = key;
  kv.value = ToJson(mark);
  // Another replica deprecated it first: its reason and time stand.
  if (!txn->succeeded && txn->gets.size() == 1 && !txn->gets[0].kvs.empty()) {
    kv = txn->gets[0].kvs[0];
  }
  absl::MutexLock lock(&mu_);
  absl::Status s = MarkFrom(index_, kv, model_fingerprint, version);
  if (!s.ok()) return s;
  return *index_.Find(model_fingerprint, version);
}

std::string EtcdStrategyStore::ProjectionsPrefix(const std::string& sha256) const {
  return absl::StrFormat("%s/projections/%s/", prefix_, sha256);
}

ProjectionsResolver EtcdStrategyStore::Resolver() const {
  return [this](const ProjectionsHeader& h) { return GetProjections(h); };
}

absl::Status EtcdStrategyStore::PutProjections(
    std::shared_ptr<const OutputProjections> projections) {
  if (projections == nullptr) return absl::InvalidArgumentError("projections is null");
  const std::string prefix = ProjectionsPrefix(projections->sha256());
  const std::string size_key = prefix + kProjectionsSizeName;
  auto present = client_->Get(size_key);
  if (!present.ok()) return present.status();
  if (!present->kvs.empty()) return absl::OkStatus();  // content-addressed
  // Pieces first, the size last: a blob whose size key exists is whole. Writers of the same
  // blob write the same bytes, so replicas racing here agree.
  const std::string& blob = projections->blob();
  for (size_t off = 0, i = 0; off < blob.size(); off += kEtcdPieceBytes, ++i) {
    auto put =
        client_->Put(absl::StrFormat("%s%08d", prefix, i), blob.substr(off, kEtcdPieceBytes));
    if (!put.ok()) return put.status();
  }
  auto put = client_->Put(size_key, std::to_string(blob.size()));
  return put.ok() ? absl::OkStatus() : put.status();
}

absl::StatusOr<std::shared_ptr<const OutputProjections>> EtcdStrategyStore::GetProjections(
    const ProjectionsHeader& header) const {
  absl::Status s = CheckProjectionsHeader(header, "projections");
  if (!s.ok()) return s;
  const std::string prefix = ProjectionsPrefix(header.sha256);
  auto size = client_->Get(prefix + kProjectionsSizeName);
  if (!size.ok()) return size.status();
  if (size->kvs.empty()) return ProjectionsNotFound(header);
  uint64_t bytes = 0;
  if (!absl::SimpleAtoi(size->kvs[0].value, &bytes) || bytes != header.blob_bytes()) {
    return absl::DataLossError(absl::StrFormat(
        "etcd key %s%s is \"%s\"; the header says %d bytes", prefix, kProjectionsSizeName,
        size->kvs[0].value.substr(0, 32), header.blob_bytes()));
  }
  std::string blob;
  blob.reserve(bytes);
  for (size_t i = 0; blob.size() < bytes; ++i) {
    const std::string key = absl::StrFormat("%s%08d", prefix, i);
    auto piece = client_->Get(key);
    if (!piece.ok()) return piece.status();
    if (piece->kvs.empty() || piece->kvs[0].value.empty() ||
        blob.size() + piece->kvs[0].value.size() > bytes) {
      return absl::DataLossError(
          absl::StrFormat("etcd key %s: a projections piece missing or too long", key));
    }
    blob += piece->kvs[0].value;
  }
  auto p = ProjectionsFromBlob(header, std::move(blob));
  if (!p.ok()) {
    return absl::DataLossError(absl::StrFormat("etcd keys %s*: %s", prefix, p.status().message()));
  }
  return p;
}

}  // namespace kvshare
