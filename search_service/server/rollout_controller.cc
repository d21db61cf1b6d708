#include "search_service/server/rollout_controller.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "proto/wire/strategy_wire.h"
#include "search_service/server/fleet_state_file.h"
#include "search_service/server/registry_wire.h"
#include "service_runtime/log_value.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

// The strategy of (fingerprint, version) in `store`; version 0 is the identity.
absl::StatusOr<std::shared_ptr<const SharingStrategy>> StrategyOf(const StrategyStore& store,
                                                                  const std::string& fingerprint,
                                                                  uint64_t version) {
  if (version > 0) {
    auto record = store.Get(fingerprint, version);
    if (!record.ok()) return record.status();
    return record->strategy;
  }
  // Version 0: the identity, shaped like the model's published strategies.
  std::vector<StrategyRecord> records = store.List(fingerprint);
  if (records.empty()) {
    return absl::NotFoundError(absl::StrFormat(
        "model %s has no published strategy, so its layer count (for the identity, version "
        "0) is unknown",
        fingerprint));
  }
  return std::make_shared<const SharingStrategy>(
      SharingStrategy::Identity(records.front().strategy->n_layers(), fingerprint));
}

void LogSaveFailure(const absl::Status& s) {
  if (!s.ok()) {
    spdlog::error("event=fleet_state_save_failed error={}",
                  runtime::LogValue(std::string(s.message())));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<RolloutController>> RolloutController::Open(
    const RolloutControllerOptions& options, StrategyStore* store) {
  auto state_store = DirectoryFleetState::Open(options.dir);
  if (!state_store.ok()) return state_store.status();
  return Open(options, store, std::move(*state_store));
}

absl::StatusOr<std::unique_ptr<RolloutController>> RolloutController::Open(
    const RolloutControllerOptions& options, StrategyStore* store,
    std::unique_ptr<FleetStateStore> state_store) {
  auto state = state_store->Read([store](const std::string& fingerprint, uint64_t v) {
    return StrategyOf(*store, fingerprint, v).ok();
  });
  if (!state.ok()) return state.status();
  std::unique_ptr<RolloutController> c(
      new RolloutController(options, store, std::move(state_store)));
  {
    // Not shared yet; the lock costs nothing and keeps the analysis exact.
    absl::MutexLock lock(&c->mu_);
    c->state_.control = std::move(*state);
    const v1::FleetControlState& loaded = c->state_.control;
    int active = 0;
    for (const v1::Rollout& r : loaded.rollouts()) active += IsActive(r);
    spdlog::info(
        "event=fleet_state_loaded from={} rollouts={} active={} pins={} baselines={} "
        "generation={}",
        runtime::LogValue(c->state_store_->Describe()), loaded.rollouts_size(), active,
        loaded.pins_size(), loaded.baselines_size(), loaded.generation());
  }
  RolloutController* raw = c.get();
  c->state_store_->Watch([raw](v1::FleetControlState s) { raw->Adopt(std::move(s)); });
  c->state_store_->WatchWorkers(
      [raw](const std::string& replica, const std::string& id, std::optional<FleetWorker> w) {
        raw->RemoteWorker(replica, id, std::move(w));
      });
  return c;
}

RolloutController::~RolloutController() {
  // Stops the state store's watches before what their callbacks use goes.
  state_store_->Watch(nullptr);
  state_store_->WatchWorkers(nullptr);
}

void RolloutController::RemoteWorker(const std::string& replica, const std::string& worker_id,
                                     std::optional<FleetWorker> worker) {
  {
    absl::MutexLock lock(&mu_);
    if (worker.has_value()) {
      remote_[worker_id][replica] = std::move(*worker);
    } else {
      remote_[worker_id].erase(replica);
    }
    MergeWorker(worker_id);
    Reconcile();
  }
  NotifyWatchers();
}

void RolloutController::MergeWorker(const std::string& worker_id) {
  auto local = streams_.find(worker_id);
  if (local != streams_.end() && local->second.channel != nullptr) return;
  const FleetWorker* best = nullptr;
  if (auto it = remote_.find(worker_id); it != remote_.end()) {
    for (const auto& [replica, w] : it->second) {
      if (best == nullptr || (w.connected && !best->connected) ||
          (w.connected == best->connected && w.last_seen > best->last_seen)) {
        best = &w;
      }
    }
  }
  if (best != nullptr) {
    FleetWorker& fw = state_.workers[worker_id];
    const bool was_connected = fw.connected;
    fw = *best;
    fw.worker_id = worker_id;
    if (fw.connected) fw.last_seen = absl::Now();
    if (!fw.connected && was_connected) fw.last_seen = absl::Now();
    return;
  }
  auto it = state_.workers.find(worker_id);
  if (it != state_.workers.end() && it->second.connected) {
    // Its replica went (its lease expired) and nobody else has it yet.
    it->second.connected = false;
    it->second.last_seen = absl::Now();
  }
}

void RolloutController::PublishLocal(const std::string& worker_id) {
  auto it = state_.workers.find(worker_id);
  if (it == state_.workers.end()) return;
  FleetWorker w = it->second;
  // A connected worker's last_seen matters to nobody else; leaving it out saves a write per
  // load report.
  if (w.connected) w.last_seen = absl::UnixEpoch();
  state_store_->PublishWorker(w);
}

absl::Status RolloutController::Save(const v1::FleetControlState* before) {
  absl::Status s = state_store_->Write(&state_.control);
  if (!s.ok() && before != nullptr) state_.control = *before;
  if (absl::IsAborted(s)) {
    auto now = state_store_->Read([this](const std::string& fingerprint, uint64_t v) {
      return StrategyOf(*store_, fingerprint, v).ok();
    });
    if (now.ok() && now->generation() > state_.control.generation()) {
      spdlog::info("event=fleet_state_taken generation={} reason=\"a newer state was saved\"",
                   now->generation());
      state_.control = std::move(*now);
    }
  }
  return s;
}

void RolloutController::TakeLead() {
  {
    absl::MutexLock lock(&mu_);
    auto stored = state_store_->Read([this](const std::string& fingerprint, uint64_t v) {
      return StrategyOf(*store_, fingerprint, v).ok();
    });
    if (!stored.ok()) {
      spdlog::error("event=fleet_state_read_failed error={}",
                    runtime::LogValue(std::string(stored.status().message())));
    } else if (stored->generation() > state_.control.generation()) {
      state_.control = std::move(*stored);
    }
    int active = 0;
    for (const v1::Rollout& r : state_.control.rollouts()) active += IsActive(r);
    spdlog::info("event=rollouts_resumed active={} generation={}", active,
                 state_.control.generation());
    Reconcile();
  }
  NotifyWatchers();
}

void RolloutController::Adopt(v1::FleetControlState state) {
  {
    absl::MutexLock lock(&mu_);
    // Its own saves come back through the watch too; only newer states matter.
    if (state.generation() <= state_.control.generation()) return;
    spdlog::info("event=fleet_state_adopted generation={} rollouts={} pins={}", state.generation(),
                 state.rollouts_size(), state.pins_size());
    state_.control = std::move(state);
    Reconcile();
  }
  NotifyWatchers();
}

v1::Rollout* RolloutController::FindRollout(const std::string& id) {
  for (v1::Rollout& r : *state_.control.mutable_rollouts()) {
    if (r.rollout_id() == id) return &r;
  }
  return nullptr;
}

void RolloutController::SendAssignments() {
  for (auto& [id, w] : streams_) {
    if (w.channel == nullptr) continue;
    const FleetWorker& fw = state_.workers.at(id);
    std::optional<DesiredVersion> d = DesiredFor(state_.control, fw);
    if (!d.has_value()) {
      w.has_assignment = false;
      continue;
    }
    auto strategy = StrategyOf(*store_, d->fingerprint, d->version);
    if (!strategy.ok()) {
      spdlog::error("event=assignment_failed worker_id={} version={} error={}",
                    runtime::LogValue(id), d->version,
                    runtime::LogValue(std::string(strategy.status().message())));
      continue;
    }
    w.has_assignment = true;
    w.assigned_version = d->version;
    w.assigned_fingerprint = d->fingerprint;
    w.assigned_id = (*strategy)->id();
    w.cause = d->cause;
    if (w.has_sent && w.sent_version == d->version && w.sent_id == w.assigned_id) continue;
    // It runs it already, and nothing sent earlier is still on its way to change that.
    if (fw.current_version == d->version && fw.current_strategy_id == w.assigned_id && !w.pending) {
      continue;
    }
    v1::StrategyAssignment a;
    a.set_version(d->version);
    ToProto(**strategy, a.mutable_strategy());
    a.set_cause(d->cause);
    spdlog::info("event=assignment_sent worker_id={} version={} strategy_id={} cause={}",
                 runtime::LogValue(id), d->version, w.assigned_id.substr(0, 16),
                 runtime::LogValue(d->cause));
    w.channel->Send(a);
    w.has_sent = w.pending = true;
    w.sent_version = d->version;
    w.sent_id = w.assigned_id;
  }
}

bool RolloutController::Advance() {
  if (!MayAdvance()) return false;
  PolicyEvents events;
  const bool changed = AdvanceRollouts(
      state_,
      [this](const std::string& fingerprint, uint64_t version) {
        auto s = StrategyOf(*store_, fingerprint, version);
        return s.ok() ? (*s)->id() : std::string();
      },
      PolicyClock{absl::Now(), started_, options_.worker_expiry}, &events);
  for (const std::string& e : events) spdlog::info("{}", e);
  return changed;
}

void RolloutController::Reconcile() {
  // Sending may let a step complete only after ACKs, which come back through Ack(); selection
  // comes first so that a new step's workers get their assignments in the same pass.
  const bool changed = Advance();
  SendAssignments();
  if (changed) LogSaveFailure(Save());
}

const std::string* RolloutController::WorkerOn(WorkerChannel* channel) const {
  for (const auto& [id, w] : streams_) {
    if (w.channel == channel) return &id;
  }
  return nullptr;
}

void RolloutController::Hello(WorkerChannel* channel, const v1::WorkerHello& hello) {
  {
    absl::MutexLock lock(&mu_);
    const std::string& id = hello.worker_id();
    WorkerStream& w = streams_[id];
    w.hello = hello;
    w.channel = channel;
    w.has_sent = w.pending = false;
    FleetWorker& fw = state_.workers[id];
    fw.worker_id = id;
    fw.model_fingerprint = hello.model_fingerprint();
    fw.labels = {hello.labels().begin(), hello.labels().end()};
    fw.connected = true;
    fw.current_version = hello.current_version();
    fw.current_strategy_id = hello.current_strategy_id();
    fw.last_seen = absl::Now();
    w.kv_bytes_per_token = hello.kv_bytes_per_token();
    auto s = StrategyOf(*store_, hello.model_fingerprint(), fw.current_version);
    if (s.ok() && (*s)->id() == fw.current_strategy_id) {
      w.owning_layers = (*s)->owning_layers();
      w.n_layers = (*s)->n_layers();
    }
    spdlog::info("event=worker_hello worker_id={} address={} fingerprint={} version={} labels={}",
                 runtime::LogValue(id), runtime::LogValue(hello.address()),
                 hello.model_fingerprint().substr(0, 16), hello.current_version(),
                 hello.labels_size());
    PublishLocal(id);
    Reconcile();
  }
  NotifyWatchers();
}

void RolloutController::Ack(WorkerChannel* channel, const v1::StrategyAck& ack) {
  {
    absl::MutexLock lock(&mu_);
    const std::string* id = WorkerOn(channel);
    if (id == nullptr) return;
    WorkerStream& w = streams_.at(*id);
    FleetWorker& fw = state_.workers.at(*id);
    // An applied ACK whose quality probe disagrees with the registry's counts as a NACK.
    v1::StrategyAck seen = ack;
    if (std::optional<std::string> why =
            ProbeDisagreement(state_.control, fw.model_fingerprint, ack)) {
      seen.set_applied(false);
      seen.set_reason(v1::NACK_REASON_QUALITY_PROBE);
      seen.set_error(*why);
    }
    w.last_ack = seen;
    w.last_ack_time = fw.last_seen = absl::Now();
    if (w.has_sent && ack.version() == w.sent_version && ack.strategy_id() == w.sent_id) {
      w.pending = false;
    }
    if (ack.applied()) {
      // What it runs, even when its probe disagrees (it applied the version).
      fw.current_version = ack.version();
      fw.current_strategy_id = ack.strategy_id();
      w.kv_bytes_per_token = ack.kv_bytes_per_token();
      auto s = StrategyOf(*store_, w.assigned_fingerprint, ack.version());
      if (s.ok()) {
        w.owning_layers = (*s)->owning_layers();
        w.n_layers = (*s)->n_layers();
      }
    }
    if (!seen.applied()) {
      spdlog::warn("event=worker_nack worker_id={} version={} reason={} error={}",
                   runtime::LogValue(*id), seen.version(), v1::NackReason_Name(seen.reason()),
                   runtime::LogValue(seen.error()));
      const std::vector<std::string> paused = PauseOnNack(state_.control, fw, seen, fw.last_seen);
      for (const std::string& rollout : paused) {
        spdlog::warn("event=rollout_paused rollout={} reason={}", rollout,
                     runtime::LogValue(FindRollout(rollout)->state_reason()));
      }
      if (!paused.empty()) LogSaveFailure(Save());
    }
    PublishLocal(*id);
    Reconcile();
  }
  NotifyWatchers();
}

void RolloutController::Load(WorkerChannel* channel, const v1::WorkerLoad& load) {
  {
    absl::MutexLock lock(&mu_);
    const std::string* id = WorkerOn(channel);
    if (id == nullptr) return;
    streams_.at(*id).load = load;
    state_.workers.at(*id).last_seen = absl::Now();
    PublishLocal(*id);  // written only when it changed (or the replica's lease did)
    Reconcile();        // lets expiries of absent workers take effect
  }
  NotifyWatchers();
}

void RolloutController::Disconnected(WorkerChannel* channel) {
  {
    absl::MutexLock lock(&mu_);
    const std::string* id = WorkerOn(channel);
    if (id == nullptr) return;
    WorkerStream& w = streams_.at(*id);
    w.channel = nullptr;
    w.has_sent = w.pending = false;
    FleetWorker& fw = state_.workers.at(*id);
    fw.connected = false;
    fw.last_seen = absl::Now();
    spdlog::info("event=worker_disconnected worker_id={}", runtime::LogValue(*id));
    PublishLocal(*id);
    MergeWorker(*id);  // it may be streaming to another replica already
    Reconcile();
  }
  NotifyWatchers();
}

absl::StatusOr<v1::Rollout> RolloutController::CreateRollout(
    const std::string& fingerprint, const std::string& model_name, uint64_t target,
    std::vector<uint32_t> steps, const std::string& selector, const QualityGate& gate) {
  if (absl::Status g = OperatorGate("CreateRollout"); !g.ok()) return g;
  absl::Status valid = ValidateRolloutRequest(target, &steps, selector);
  if (!valid.ok()) return valid;
  auto record = store_->Get(fingerprint, target);
  if (!record.ok()) return record.status();
  if (record->deprecated) {
    return absl::FailedPreconditionError(
        absl::StrFormat("target_version %d of model %s is deprecated (%s)", target,
                        fingerprint.substr(0, 16), record->deprecation_reason));
  }
  QualityGateRecord gated;
  if (gate) {
    auto g = gate(*record);
    if (!g.ok()) {
      spdlog::warn("event=rollout_refused model={} version={} error=\"{}\"",
                   fingerprint.substr(0, 16), target, std::string(g.status().message()));
      return g.status();
    }
    gated = std::move(*g);
  }
  RolloutRequest request;
  request.fingerprint = fingerprint;
  request.model_name = model_name.empty() ? record->model_name : model_name;
  request.target_version = target;
  request.steps = steps;
  request.label_selector = selector;
  v1::Rollout out;
  {
    absl::MutexLock lock(&mu_);
    const v1::FleetControlState before = state_.control;
    auto r = StartRollout(state_.control, request, absl::Now());
    if (!r.ok()) return r.status();
    if (gate) RecordGate(gated, FindRollout(r->rollout_id()));
    // Selected before the first save: other replicas never see the rollout without its first
    // step's workers (they would send those workers the baseline meanwhile).
    Advance();
    absl::Status s = Save(&before);
    if (!s.ok()) return s;
    spdlog::info(
        "event=rollout_created rollout={} model={} from={} to={} steps=[{}] selector={} "
        "allow_quality_regression={} probe={}",
        r->rollout_id(), fingerprint.substr(0, 16), r->from_version(), target,
        absl::StrJoin(steps, ","), runtime::LogValue(selector), gated.allow_quality_regression,
        gated.probe.has_value() ? absl::StrFormat("%.5f", gated.probe->mean_nll()) : "none");
    Reconcile();
    out = *FindRollout(r->rollout_id());
  }
  NotifyWatchers();
  return out;
}

absl::StatusOr<v1::Rollout> RolloutController::GetRollout(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  for (const v1::Rollout& r : state_.control.rollouts()) {
    if (r.rollout_id() == id) return r;
  }
  return absl::NotFoundError(absl::StrFormat("rollout_id \"%s\" is not a rollout", id));
}

std::vector<v1::Rollout> RolloutController::ListRollouts() const {
  absl::MutexLock lock(&mu_);
  return {state_.control.rollouts().begin(), state_.control.rollouts().end()};
}

absl::StatusOr<v1::Rollout> RolloutController::Operate(
    const std::string& id, const std::function<absl::Status(v1::Rollout&)>& change) {
  v1::Rollout out;
  {
    absl::MutexLock lock(&mu_);
    v1::Rollout* r = FindRollout(id);
    if (r == nullptr) {
      return absl::NotFoundError(absl::StrFormat("rollout_id \"%s\" is not a rollout", id));
    }
    const v1::FleetControlState before = state_.control;
    absl::Status s = change(*r);
    if (!s.ok()) return s;
    s = Save(&before);
    if (!s.ok()) return s;
    Reconcile();
    out = *FindRollout(id);
  }
  NotifyWatchers();
  return out;
}

absl::StatusOr<v1::Rollout> RolloutController::Pause(const std::string& id) {
  if (absl::Status g = OperatorGate("PauseRollout"); !g.ok()) return g;
  return Operate(id, [](v1::Rollout& r) {
    absl::Status s = PauseRollout(r, absl::Now());
    if (s.ok()) spdlog::info("event=rollout_paused rollout={} reason=operator", r.rollout_id());
    return s;
  });
}

absl::StatusOr<v1::Rollout> RolloutController::Resume(const std::string& id) {
  if (absl::Status g = OperatorGate("ResumeRollout"); !g.ok()) return g;
  return Operate(id, [this](v1::Rollout& r) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    absl::Status s = ResumeRollout(r, absl::Now());
    if (!s.ok()) return s;
    // Workers that refused the target are offered it again.
    for (auto& [wid, w] : streams_) {
      if (!w.last_ack.applied() && w.last_ack.version() == r.target_version()) w.has_sent = false;
    }
    spdlog::info("event=rollout_resumed rollout={}", r.rollout_id());
    return s;
  });
}

absl::StatusOr<v1::Rollout> RolloutController::Promote(const std::string& id) {
  if (absl::Status g = OperatorGate("PromoteRollout"); !g.ok()) return g;
  return Operate(id, [](v1::Rollout& r) {
    absl::Status s = PromoteRollout(r, absl::Now());
    if (s.ok()) spdlog::info("event=rollout_promoted rollout={}", r.rollout_id());
    return s;
  });
}

absl::StatusOr<v1::Rollout> RolloutController::Abort(const std::string& id) {
  if (absl::Status g = OperatorGate("AbortRollout"); !g.ok()) return g;
  return Operate(id, [this](v1::Rollout& r) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    absl::Status s = AbortRollout(state_.control, r, absl::Now());
    if (s.ok()) {
      spdlog::info("event=rollout_aborted rollout={} back_to={}", r.rollout_id(), r.from_version());
    }
    return s;
  });
}

absl::StatusOr<v1::Pin> RolloutController::SetPin(const v1::Pin& pin) {
  if (absl::Status g = OperatorGate("SetPin"); !g.ok()) return g;
  absl::Status valid = ValidatePin(pin);
  if (!valid.ok()) return valid;
  auto strategy = StrategyOf(*store_, pin.model(), pin.version());
  if (!strategy.ok()) return strategy.status();  // NotFound naming the model and version
  {
    absl::MutexLock lock(&mu_);
    const v1::FleetControlState before = state_.control;
    kvshare::SetPin(state_.control, pin);
    absl::Status s = Save(&before);
    if (!s.ok()) return s;
    spdlog::info("event=pin_set {} model={} version={}", PinName(pin), pin.model().substr(0, 16),
                 pin.version());
    Reconcile();
  }
  NotifyWatchers();
  return pin;
}

absl::StatusOr<std::vector<v1::Pin>> RolloutController::ClearPin(const v1::Pin& pin) {
  if (absl::Status g = OperatorGate("ClearPin"); !g.ok()) return g;
  std::vector<v1::Pin> out;
  {
    absl::MutexLock lock(&mu_);
    const v1::FleetControlState before = state_.control;
    if (!kvshare::ClearPin(state_.control, pin)) {
      return absl::NotFoundError(absl::StrFormat("no pin on %s", PinName(pin)));
    }
    absl::Status s = Save(&before);
    if (!s.ok()) return s;
    spdlog::info("event=pin_cleared {}", PinName(pin));
    Reconcile();
    out.assign(state_.control.pins().begin(), state_.control.pins().end());
  }
  NotifyWatchers();
  return out;
}

std::vector<v1::Pin> RolloutController::ListPins() const {
  absl::MutexLock lock(&mu_);
  return {state_.control.pins().begin(), state_.control.pins().end()};
}

v1::FleetStatus RolloutController::Fleet() const {
  absl::MutexLock lock(&mu_);
  v1::FleetStatus out;
  for (const auto& [id, w] : streams_) {
    const FleetWorker& fw = state_.workers.at(id);
    v1::WorkerStatus* s = out.add_workers();
    s->set_worker_id(id);
    s->set_address(w.hello.address());
    s->set_model_fingerprint(w.hello.model_fingerprint());
    s->set_model_name(w.hello.model_name());
    *s->mutable_labels() = w.hello.labels();
    s->set_connected(fw.connected);
    s->set_current_version(fw.current_version);
    s->set_current_strategy_id(fw.current_strategy_id);
    s->set_has_assignment(w.has_assignment);
    s->set_assigned_version(w.assigned_version);
    s->set_assignment_cause(w.cause);
    *s->mutable_last_ack() = w.last_ack;
    if (w.last_ack_time != absl::InfinitePast()) {
      ToTimestamp(w.last_ack_time, s->mutable_last_ack_time());
    }
    ToTimestamp(fw.last_seen, s->mutable_last_seen());
    *s->mutable_load() = w.load;
    s->set_owning_layers(w.owning_layers);
    s->set_n_layers(w.n_layers);
    s->set_kv_bytes_per_token(w.kv_bytes_per_token);
    SetRunningQuality(*store_, fw.model_fingerprint, fw.current_version, fw.current_strategy_id, s);
  }
  // Workers streaming to other replicas, as they report them.
  for (const auto& [id, fw] : state_.workers) {
    if (streams_.count(id) > 0) continue;
    v1::WorkerStatus* s = out.add_workers();
    s->set_worker_id(id);
    s->set_model_fingerprint(fw.model_fingerprint);
    s->mutable_labels()->insert(fw.labels.begin(), fw.labels.end());
    s->set_connected(fw.connected);
    s->set_current_version(fw.current_version);
    s->set_current_strategy_id(fw.current_strategy_id);
    ToTimestamp(fw.last_seen, s->mutable_last_seen());
    SetRunningQuality(*store_, fw.model_fingerprint, fw.current_version, fw.current_strategy_id, s);
  }
  for (const v1::Rollout& r : state_.control.rollouts()) {
    if (IsActive(r)) *out.add_active_rollouts() = r;
  }
  return out;
}

int RolloutController::Watch(std::function<void()> on_change) {
  absl::MutexLock lock(&watch_mu_);
  watchers_[next_watcher_] = std::move(on_change);
  return next_watcher_++;
}

void RolloutController::Unwatch(int handle) {
  absl::MutexLock lock(&watch_mu_);
  watchers_.erase(handle);
}

void RolloutController::NotifyWatchers() {
  // Held while calling, so that Unwatch() returns only once no call to that watcher runs.
  absl::MutexLock lock(&watch_mu_);
  for (auto& [handle, on_change] : watchers_) on_change();
}

}  // namespace kvshare
