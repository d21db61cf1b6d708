#include "search_service/server/etcd_fleet_state.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/util/json_util.h"
#include "spdlog/spdlog.h"

namespace kvshare {

EtcdFleetState::EtcdFleetState(std::shared_ptr<const EtcdClient> client, const std::string& prefix)
    : client_(std::move(client)),
      state_key_(prefix + "/fleet/state"),
      generation_key_(prefix + "/fleet/generation") {}

EtcdFleetState::~EtcdFleetState() { watch_.reset(); }

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
            spdlog::error("event=fleet_state_watch_refused error=\"{}\"",
                          std::string(state.status().message()));
            continue;
          }
          on_change(std::move(*state));
        }
      });
}

}  // namespace kvshare
