#include "search_service/server/etcd_fleet_state.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {

namespace {

using json = nlohmann::json;

std::string WorkerJson(const FleetWorker& w) {
  json j = {{"model_fingerprint", w.model_fingerprint},
            {"labels", w.labels},
            {"connected", w.connected},
            {"current_version", w.current_version},
            {"current_strategy_id", w.current_strategy_id},
            {"last_seen_ms", absl::ToUnixMillis(w.last_seen)}};
  return j.dump();
}

std::optional<FleetWorker> ParseWorker(const std::string& worker_id, const std::string& text) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return std::nullopt;
  FleetWorker w;
  w.worker_id = worker_id;
  auto str = [&](const char* k) {
    auto it = j.find(k);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  w.model_fingerprint = str("model_fingerprint");
  w.current_strategy_id = str("current_strategy_id");
  if (auto it = j.find("connected"); it != j.end() && it->is_boolean()) w.connected = *it;
  if (auto it = j.find("current_version"); it != j.end() && it->is_number_unsigned()) {
    w.current_version = it->get<uint64_t>();
  }
  if (auto it = j.find("last_seen_ms"); it != j.end() && it->is_number_integer()) {
    w.last_seen = absl::FromUnixMillis(it->get<int64_t>());
  }
  if (auto it = j.find("labels"); it != j.end() && it->is_object()) {
    for (const auto& [k, v] : it->items()) {
      if (v.is_string()) w.labels[k] = v.get<std::string>();
    }
  }
  return w;
}

}  // namespace

EtcdFleetState::EtcdFleetState(std::shared_ptr<const EtcdClient> client, const std::string& prefix)
    : client_(std::move(client)),
      state_key_(prefix + "/fleet/state"),
      generation_key_(prefix + "/fleet/generation"),
      workers_prefix_(prefix + "/fleet/workers/") {}

void EtcdFleetState::SetReplica(std::string replica, std::function<int64_t()> lease_of) {
  absl::MutexLock lock(&mu_);
  // One key segment: a '/' in the id ("host:port/pid7") would split the key elsewhere.
  replica_ = absl::StrReplaceAll(replica, {{"/", "_"}});
  lease_of_ = std::move(lease_of);
}

EtcdFleetState::~EtcdFleetState() {
  watch_.reset();
  workers_watch_.reset();
}

void EtcdFleetState::PublishWorker(const FleetWorker& worker) {
  const std::string value = WorkerJson(worker);
  std::string replica;
  int64_t lease = 0;
  {
    absl::MutexLock lock(&mu_);
    if (!lease_of_ || replica_.empty()) return;
    replica = replica_;
    lease = lease_of_();
    if (lease == 0) return;
    auto it = published_.find(worker.worker_id);
    if (it != published_.end() && it->second == std::make_pair(value, lease)) return;
  }
  const std::string key = workers_prefix_ + worker.worker_id + "/" + replica;
  auto put = client_->Put(key, value, lease);
  if (!put.ok()) {
    spdlog::warn("event=worker_record_failed key={} error={}", key,
                 runtime::LogValue(std::string(put.status().message())));
    return;
  }
  absl::MutexLock lock(&mu_);
  published_[worker.worker_id] = {value, lease};
}

void EtcdFleetState::WatchWorkers(WorkerUpdate on_update) {
  workers_watch_.reset();
  if (!on_update) return;
  // (worker id, replica) of a key under workers_prefix_.
  auto split = [this](const std::string& key, std::string* worker, std::string* replica) {
    if (key.compare(0, workers_prefix_.size(), workers_prefix_) != 0) return false;
    const std::string rest = key.substr(workers_prefix_.size());
    const size_t slash = rest.rfind('/');
    if (slash == std::string::npos || slash == 0) return false;
    *worker = rest.substr(0, slash);
    *replica = rest.substr(slash + 1);
    return true;
  };
  int64_t from = 1;
  auto now = client_->GetPrefix(workers_prefix_);
  if (now.ok()) {
    from = now->revision + 1;
    for (const EtcdKeyValue& kv : now->kvs) {
      std::string worker, replica;
      if (split(kv.key, &worker, &replica) && replica != Replica()) {
        on_update(replica, worker, ParseWorker(worker, kv.value));
      }
    }
  }
  workers_watch_ =
      client_->Watch(workers_prefix_, from, [this, split, on_update](const EtcdWatchBatch& batch) {
        for (const EtcdEvent& e : batch.events) {
          std::string worker, replica;
          if (!split(e.kv.key, &worker, &replica) || replica == Replica()) continue;
          on_update(replica, worker, e.deleted ? std::nullopt : ParseWorker(worker, e.kv.value));
        }
      });
}

void EtcdFleetState::SetWriteFence(std::optional<EtcdCompare> fence) {
  absl::MutexLock lock(&mu_);
  fence_ = std::move(fence);
}

absl::StatusOr<v1::FleetControlState> EtcdFleetState::Read(const VersionExists& version_exists) {
  // One transaction: both keys at one revision.
  auto txn = client_->Txn({}, {EtcdOp::Get(state_key_), EtcdOp::Get(generation_key_)}, {});
  if (!txn.ok()) return txn.status();
  if (txn->gets.size() != 2) {
    return absl::InternalError(
        absl::StrFormat("etcd read of %s: answer without its keys", state_key_));
  }
  const std::vector<EtcdKeyValue>& state_kv = txn->gets[0].kvs;
  const std::vector<EtcdKeyValue>& generation_kv = txn->gets[1].kvs;
  {
    absl::MutexLock lock(&mu_);
    version_exists_ = version_exists;
    read_revision_ = txn->revision;
  }
  if (state_kv.empty()) {
    if (!generation_kv.empty()) {
      return absl::DataLossError(absl::StrFormat(
          "etcd key %s is missing, but %s says generation %s was written: the fleet state "
          "(rollouts, pins, baselines) is lost. Restore it, or delete %s to start with an "
          "empty fleet state on purpose",
          state_key_, generation_key_, generation_kv[0].value.substr(0, 32), generation_key_));
    }
    return v1::FleetControlState();
  }
  auto state = ParseFleetState(state_kv[0].value, generation_kv.empty() ? "" : generation_key_,
                               version_exists, "etcd key " + state_key_);
  if (!state.ok()) return state.status();
  uint64_t generation = 0;
  if (generation_kv.empty() || !absl::SimpleAtoi(generation_kv[0].value, &generation) ||
      generation != state->generation()) {
    return absl::DataLossError(absl::StrFormat(
        "etcd key %s holds generation %d but %s says \"%s\": the state was replaced outside "
        "the service",
        state_key_, state->generation(), generation_key_,
        generation_kv.empty() ? "(missing)" : generation_kv[0].value.substr(0, 32)));
  }
  return state;
}

absl::Status EtcdFleetState::Write(v1::FleetControlState* state) {
  const uint64_t based_on = state->generation();
  v1::FleetControlState next = *state;
  next.set_generation(based_on + 1);
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  std::string json;
  auto printed = google::protobuf::util::MessageToJsonString(next, &json, print);
  if (!printed.ok()) return absl::InternalError(printed.ToString());
  if (json.size() > kMaxFleetStateBytes) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("fleet state for etcd key %s is %d bytes, over the limit of %d", state_key_,
                        json.size(), kMaxFleetStateBytes));
  }
  std::vector<EtcdCompare> compares = {
      based_on == 0 ? EtcdCompare::Absent(generation_key_)
                    : EtcdCompare::ValueIs(generation_key_, std::to_string(based_on))};
  {
    absl::MutexLock lock(&mu_);
    if (fence_.has_value()) compares.push_back(*fence_);
  }
  auto txn = client_->Txn(
      compares,
      {EtcdOp::Put(state_key_, json), EtcdOp::Put(generation_key_, std::to_string(based_on + 1))},
      {EtcdOp::Get(generation_key_)});
  if (!txn.ok()) return txn.status();
  if (!txn->succeeded) {
    const std::string now = txn->gets.empty() || txn->gets[0].kvs.empty()
                                ? "(missing)"
                                : txn->gets[0].kvs[0].value.substr(0, 32);
    return absl::AbortedError(absl::StrFormat(
        "fleet state at etcd key %s: based on generation %d, but %s is %s%s (another replica "
        "wrote it, or this replica is no longer the leader); read it again",
        state_key_, based_on, generation_key_, now,
        compares.size() > 1 ? " or the write fence failed" : ""));
  }
  state->set_generation(based_on + 1);
  return absl::OkStatus();
}

void EtcdFleetState::Watch(std::function<void(v1::FleetControlState)> on_change) {
  watch_.reset();
  if (!on_change) return;
  int64_t from;
  {
    absl::MutexLock lock(&mu_);
    from = read_revision_ + 1;
  }
  watch_ = client_->Watch(
      state_key_, from, [this, on_change = std::move(on_change)](const EtcdWatchBatch& batch) {
        VersionExists version_exists;
        {
          absl::MutexLock lock(&mu_);
          version_exists = version_exists_;
        }
        std::vector<EtcdKeyValue> puts;
        if (batch.resync) {
          auto now = client_->Get(state_key_);
          if (now.ok()) puts = now->kvs;
        }
        for (const EtcdEvent& e : batch.events) {
          // The watch is on a prefix: P/fleet/state only, not P/fleet/state-anything.
          if (e.kv.key != state_key_) continue;
          if (e.deleted) {
            spdlog::error("event=fleet_state_deleted key={} (kept the state in memory)",
                          state_key_);
            continue;
          }
          puts.push_back(e.kv);
        }
        for (const EtcdKeyValue& kv : puts) {
          auto state =
              ParseFleetState(kv.value, generation_key_, version_exists, "etcd key " + state_key_);
          if (!state.ok()) {
            spdlog::error("event=fleet_state_watch_refused error={}",
                          runtime::LogValue(std::string(state.status().message())));
            continue;
          }
          on_change(std::move(*state));
        }
      });
}

}  // namespace kvshare
