#include "search_service/server/rollout_controller.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/util/file.h"
#include "google/protobuf/util/json_util.h"
#include "proto/wire/strategy_wire.h"
#include "search_service/server/registry_wire.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

// FNV-1a 64: stable across builds and machines (std::hash is not), so selection survives a
// restart of the service and agrees with any other implementation of the rule.
uint64_t StableHash(const std::string& s) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

bool IsActive(const v1::Rollout& r) {
  return r.state() == v1::ROLLOUT_RUNNING || r.state() == v1::ROLLOUT_PAUSED;
}

absl::StatusOr<std::map<std::string, std::string>> ParseSelector(const std::string& selector,
                                                                 const std::string& field) {
  std::map<std::string, std::string> out;
  if (selector.empty()) return out;
  for (absl::string_view part : absl::StrSplit(selector, ',')) {
    const size_t eq = part.find('=');
    if (eq == absl::string_view::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrFormat("%s \"%s\": \"%s\" is not key=value", field,
                                                        selector, std::string(part)));
    }
    out[std::string(part.substr(0, eq))] = std::string(part.substr(eq + 1));
  }
  return out;
}

bool LabelsMatch(const std::map<std::string, std::string>& want, const v1::WorkerHello& hello) {
  for (const auto& [k, v] : want) {
    auto it = hello.labels().find(k);
    if (it == hello.labels().end() || it->second != v) return false;
  }
  return true;
}

std::string PinName(const v1::Pin& p) {
  return p.has_worker_id() ? absl::StrFormat("worker %s", p.worker_id())
                           : absl::StrFormat("label %s", p.label());
}

const char* StateName(v1::RolloutState s) {
  switch (s) {
    case v1::ROLLOUT_RUNNING:
      return "running";
    case v1::ROLLOUT_PAUSED:
      return "paused";
    case v1::ROLLOUT_COMPLETED:
      return "completed";
    case v1::ROLLOUT_ABORTED:
      return "aborted";
    default:
      return "unspecified";
  }
}

}  // namespace

std::vector<std::string> RolloutSelectionOrder(std::vector<std::string> ids) {
  std::sort(ids.begin(), ids.end(), [](const std::string& a, const std::string& b) {
    const uint64_t ha = StableHash(a), hb = StableHash(b);
    return ha != hb ? ha < hb : a < b;
  });
  return ids;
}

absl::StatusOr<std::unique_ptr<RolloutController>> RolloutController::Open(
    const RolloutControllerOptions& options, StrategyStore* store) {
  absl::Status s = MakeDirectoryDurably(options.dir);
  if (!s.ok()) return s;
  auto lock = DirectoryLock::Acquire(options.dir);
  if (!lock.ok()) return lock.status();
  std::unique_ptr<RolloutController> c(new RolloutController(options, store, std::move(*lock)));
  const std::string path = options.dir + "/state.json";
  if (std::filesystem::exists(path)) {
    auto text = ReadFileToString(path);
    if (!text.ok()) return text.status();
    google::protobuf::util::JsonParseOptions parse;
    auto parsed = google::protobuf::util::JsonStringToMessage(*text, &c->state_, parse);
    if (!parsed.ok()) {
      return absl::DataLossError(
          absl::StrFormat("%s does not parse as FleetControlState: %s", path, parsed.ToString()));
    }
  }
  int active = 0;
  for (const v1::Rollout& r : c->state_.rollouts()) active += IsActive(r);
  spdlog::info("event=fleet_state_loaded dir={} rollouts={} active={} pins={} baselines={}",
               options.dir, c->state_.rollouts_size(), active, c->state_.pins_size(),
               c->state_.baselines_size());
  return c;
}

absl::Status RolloutController::Save() {
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  print.add_whitespace = true;
  std::string json;
  auto printed = google::protobuf::util::MessageToJsonString(state_, &json, print);
  if (!printed.ok()) return absl::InternalError(printed.ToString());
  return WriteFileAtomically(options_.dir + "/state.json", json);
}

v1::Rollout* RolloutController::FindRollout(const std::string& id) {
  for (v1::Rollout& r : *state_.mutable_rollouts()) {
    if (r.rollout_id() == id) return &r;
  }
  return nullptr;
}

v1::Rollout* RolloutController::ActiveRollout(const std::string& fingerprint) {
  for (v1::Rollout& r : *state_.mutable_rollouts()) {
    if (IsActive(r) && r.model_fingerprint() == fingerprint) return &r;
  }
  return nullptr;
}

const v1::Pin* RolloutController::PinFor(const WorkerEntry& w) const {
  for (const v1::Pin& p : state_.pins()) {
    if (p.has_worker_id() && p.worker_id() == w.hello.worker_id()) return &p;
  }
  for (const v1::Pin& p : state_.pins()) {
    if (!p.has_label()) continue;
    auto want = ParseSelector(p.label(), "label");
    if (want.ok() && LabelsMatch(*want, w.hello)) return &p;
  }
  return nullptr;
}

bool RolloutController::Eligible(const v1::Rollout& r, const WorkerEntry& w) const {
  if (w.channel == nullptr || PinFor(w) != nullptr) return false;
  if (r.label_selector().empty()) return w.hello.model_fingerprint() == r.model_fingerprint();
  auto want = ParseSelector(r.label_selector(), "label_selector");
  return want.ok() && LabelsMatch(*want, w.hello);
}

std::optional<RolloutController::Desired> RolloutController::DesiredFor(const WorkerEntry& w) {
  if (const v1::Pin* p = PinFor(w)) {
    return Desired{p->model(), p->version(), absl::StrFormat("pin %s", PinName(*p))};
  }
  for (const v1::Rollout& r : state_.rollouts()) {
    if (!IsActive(r) || !Eligible(r, w)) continue;
    const auto& sel = r.selected_workers();
    if (std::find(sel.begin(), sel.end(), w.hello.worker_id()) != sel.end()) {
      return Desired{
          r.model_fingerprint(), r.target_version(),
          absl::StrFormat("rollout %s step %d/%d (%d%%)", r.rollout_id(), r.current_step() + 1,
                          r.steps_size(), r.steps(r.current_step()))};
    }
  }
  auto it = state_.baselines().find(w.hello.model_fingerprint());
  if (it != state_.baselines().end()) {
    return Desired{w.hello.model_fingerprint(), it->second, "baseline"};
  }
  return std::nullopt;
}

absl::StatusOr<std::shared_ptr<const SharingStrategy>> RolloutController::StrategyOf(
    const std::string& fingerprint, uint64_t version) const {
  if (version > 0) {
    auto record = store_->Get(fingerprint, version);
    if (!record.ok()) return record.status();
    return record->strategy;
  }
  // Version 0: the identity, shaped like the model's published strategies.
  std::vector<StrategyRecord> records = store_->List(fingerprint);
  if (records.empty()) {
    return absl::NotFoundError(absl::StrFormat(
        "model %s has no published strategy, so its layer count (for the identity, version "
        "0) is unknown",
        fingerprint));
  }
  return std::make_shared<const SharingStrategy>(
      SharingStrategy::Identity(records.front().strategy->n_layers(), fingerprint));
}

void RolloutController::Touch(v1::Rollout& r) { ToTimestamp(absl::Now(), r.mutable_update_time()); }

bool RolloutController::AdvanceRollout(v1::Rollout& r) {
  bool changed = false;
  while (r.state() == v1::ROLLOUT_RUNNING) {
    std::vector<std::string> eligible;
    for (auto& [id, w] : workers_) {
      if (Eligible(r, w)) eligible.push_back(id);
    }
    const uint32_t percent = r.steps(r.current_step());
    const size_t want = (eligible.size() * percent + 99) / 100;  // ceil
    std::vector<std::string> selected(r.selected_workers().begin(), r.selected_workers().end());
    size_t selected_eligible = 0;
    for (const std::string& id : eligible) {
      selected_eligible += std::count(selected.begin(), selected.end(), id);
    }
    for (const std::string& id : RolloutSelectionOrder(eligible)) {
      if (selected_eligible >= want) break;
      if (std::count(selected.begin(), selected.end(), id)) continue;
      r.add_selected_workers(id);
      selected.push_back(id);
      ++selected_eligible;
      changed = true;
      spdlog::info("event=rollout_selected rollout={} worker_id={} step={} percent={}",
                   r.rollout_id(), id, r.current_step() + 1, percent);
    }
    // Gate: every selected worker runs the target. One away for longer than the expiry no
    // longer holds the rollout up (it gets the target when it returns).
    auto target = StrategyOf(r.model_fingerprint(), r.target_version());
    const std::string target_id = target.ok() ? (*target)->id() : "";
    uint32_t acked = 0;
    bool pending = false;
    const absl::Time now = absl::Now();
    for (const std::string& id : selected) {
      auto it = workers_.find(id);
      if (it == workers_.end()) {
        if (now - started_ < options_.worker_expiry) pending = true;
        continue;
      }
      const WorkerEntry& w = it->second;
      if (PinFor(w) != nullptr) continue;  // pinned away from the rollout
      if (w.channel != nullptr && w.current_version == r.target_version() &&
          w.current_id == target_id) {
        ++acked;
      } else if (w.channel != nullptr ||
                 now - std::max(w.last_seen, started_) < options_.worker_expiry) {
        pending = true;
      }
    }
    if (r.eligible_workers() != eligible.size() || r.acked_workers() != acked) {
      r.set_eligible_workers(eligible.size());
      r.set_acked_workers(acked);
    }
    if (pending || eligible.empty() || selected_eligible < want) break;
    if (r.current_step() + 1 < static_cast<uint32_t>(r.steps_size())) {
      r.set_current_step(r.current_step() + 1);
      spdlog::info("event=rollout_step rollout={} step={}/{} percent={}", r.rollout_id(),
                   r.current_step() + 1, r.steps_size(), r.steps(r.current_step()));
    } else {
      r.set_state(v1::ROLLOUT_COMPLETED);
      r.set_state_reason(absl::StrFormat("%d workers run version %d", acked, r.target_version()));
      (*state_.mutable_baselines())[r.model_fingerprint()] = r.target_version();
      spdlog::info("event=rollout_completed rollout={} version={} workers={}", r.rollout_id(),
                   r.target_version(), acked);
    }
    Touch(r);
    changed = true;
  }
  return changed;
}

void RolloutController::SendAssignments() {
  for (auto& [id, w] : workers_) {
    if (w.channel == nullptr) continue;
    std::optional<Desired> d = DesiredFor(w);
    if (!d.has_value()) {
      w.has_assignment = false;
      continue;
    }
    auto strategy = StrategyOf(d->fingerprint, d->version);
    if (!strategy.ok()) {
      spdlog::error("event=assignment_failed worker_id={} version={} error=\"{}\"", id, d->version,
                    std::string(strategy.status().message()));
      continue;
    }
    w.has_assignment = true;
    w.assigned_version = d->version;
    w.assigned_fingerprint = d->fingerprint;
    w.assigned_id = (*strategy)->id();
    w.cause = d->cause;
    if (w.has_sent && w.sent_version == d->version && w.sent_id == w.assigned_id) continue;
    // It runs it already, and nothing sent earlier is still on its way to change that.
    if (w.current_version == d->version && w.current_id == w.assigned_id && !w.pending) continue;
    v1::StrategyAssignment a;
    a.set_version(d->version);
    ToProto(**strategy, a.mutable_strategy());
    a.set_cause(d->cause);
    spdlog::info("event=assignment_sent worker_id={} version={} strategy_id={} cause=\"{}\"", id,
                 d->version, w.assigned_id.substr(0, 16), d->cause);
    w.channel->Send(a);
    w.has_sent = w.pending = true;
    w.sent_version = d->version;
    w.sent_id = w.assigned_id;
  }
}

void RolloutController::Reconcile() {
  // Sending may let a step complete only after ACKs, which come back through Ack(); selection
  // comes first so that a new step's workers get their assignments in the same pass.
  bool changed = false;
  for (v1::Rollout& r : *state_.mutable_rollouts()) changed |= AdvanceRollout(r);
  SendAssignments();
  if (changed) {
    absl::Status s = Save();
    if (!s.ok())
      spdlog::error("event=fleet_state_save_failed error=\"{}\"", std::string(s.message()));
  }
}

RolloutController::WorkerEntry* RolloutController::EntryFor(WorkerChannel* channel) {
  for (auto& [id, w] : workers_) {
    if (w.channel == channel) return &w;
  }
  return nullptr;
}

void RolloutController::Hello(WorkerChannel* channel, const v1::WorkerHello& hello) {
  {
    absl::MutexLock lock(&mu_);
    WorkerEntry& w = workers_[hello.worker_id()];
    w.hello = hello;
    w.channel = channel;
    w.current_version = hello.current_version();
    w.current_id = hello.current_strategy_id();
    w.has_sent = w.pending = false;
    w.last_seen = absl::Now();
    auto s = StrategyOf(hello.model_fingerprint(), w.current_version);
    if (s.ok() && (*s)->id() == w.current_id) {
      w.owning_layers = (*s)->owning_layers();
      w.n_layers = (*s)->n_layers();
    }
    spdlog::info("event=worker_hello worker_id={} address={} fingerprint={} version={} labels={}",
                 hello.worker_id(), hello.address(), hello.model_fingerprint().substr(0, 16),
                 hello.current_version(), hello.labels_size());
    Reconcile();
  }
  NotifyWatchers();
}

void RolloutController::Ack(WorkerChannel* channel, const v1::StrategyAck& ack) {
  {
    absl::MutexLock lock(&mu_);
    WorkerEntry* w = EntryFor(channel);
    if (w == nullptr) return;
    w->last_ack = ack;
    w->last_ack_time = w->last_seen = absl::Now();
    if (w->has_sent && ack.version() == w->sent_version && ack.strategy_id() == w->sent_id) {
      w->pending = false;
    }
    if (ack.applied()) {
      w->current_version = ack.version();
      w->current_id = ack.strategy_id();
      auto s = StrategyOf(w->assigned_fingerprint, ack.version());
      if (s.ok()) {
        w->owning_layers = (*s)->owning_layers();
        w->n_layers = (*s)->n_layers();
      }
    } else {
      spdlog::warn("event=worker_nack worker_id={} version={} reason={} error=\"{}\"",
                   w->hello.worker_id(), ack.version(), v1::NackReason_Name(ack.reason()),
                   ack.error());
      for (v1::Rollout& r : *state_.mutable_rollouts()) {
        if (r.state() != v1::ROLLOUT_RUNNING || r.target_version() != ack.version() ||
            !Eligible(r, *w)) {
          continue;
        }
        r.set_state(v1::ROLLOUT_PAUSED);
        r.set_state_reason(absl::StrFormat("worker %s NACKed version %d (%s): %s",
                                           w->hello.worker_id(), ack.version(),
                                           v1::NackReason_Name(ack.reason()), ack.error()));
        Touch(r);
        spdlog::warn("event=rollout_paused rollout={} reason=\"{}\"", r.rollout_id(),
                     r.state_reason());
        absl::Status s = Save();
        if (!s.ok())
          spdlog::error("event=fleet_state_save_failed error=\"{}\"", std::string(s.message()));
      }
    }
    Reconcile();
  }
  NotifyWatchers();
}

void RolloutController::Load(WorkerChannel* channel, const v1::WorkerLoad& load) {
  {
    absl::MutexLock lock(&mu_);
    WorkerEntry* w = EntryFor(channel);
    if (w == nullptr) return;
    w->load = load;
    w->last_seen = absl::Now();
    Reconcile();  // lets expiries of absent workers take effect
  }
  NotifyWatchers();
}

void RolloutController::Disconnected(WorkerChannel* channel) {
  {
    absl::MutexLock lock(&mu_);
    WorkerEntry* w = EntryFor(channel);
    if (w == nullptr) return;
    w->channel = nullptr;
    w->has_sent = w->pending = false;
    w->last_seen = absl::Now();
    spdlog::info("event=worker_disconnected worker_id={}", w->hello.worker_id());
    Reconcile();
  }
  NotifyWatchers();
}

absl::StatusOr<v1::Rollout> RolloutController::CreateRollout(const std::string& fingerprint,
                                                             const std::string& model_name,
                                                             uint64_t target,
                                                             std::vector<uint32_t> steps,
                                                             const std::string& selector) {
  if (target < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("target_version %d must be >= 1 (a published version)", target));
  }
  if (steps.empty()) steps = {100};
  for (size_t i = 0; i < steps.size(); ++i) {
    if (steps[i] < 1 || steps[i] > 100) {
      return absl::InvalidArgumentError(
          absl::StrFormat("steps[%d] %d is not a percent in [1, 100]", i, steps[i]));
    }
    if (i > 0 && steps[i] <= steps[i - 1]) {
      return absl::InvalidArgumentError(
          absl::StrFormat("steps[%d] %d must be above steps[%d] %d (steps increase)", i, steps[i],
                          i - 1, steps[i - 1]));
    }
  }
  if (steps.back() != 100) {
    return absl::InvalidArgumentError(
        absl::StrFormat("steps[%d] %d: the last step must be 100", steps.size() - 1, steps.back()));
  }
  auto parsed = ParseSelector(selector, "label_selector");
  if (!parsed.ok()) return parsed.status();
  auto record = store_->Get(fingerprint, target);
  if (!record.ok()) return record.status();
  if (record->deprecated) {
    return absl::FailedPreconditionError(
        absl::StrFormat("target_version %d of model %s is deprecated (%s)", target,
                        fingerprint.substr(0, 16), record->deprecation_reason));
  }
  v1::Rollout out;
  {
    absl::MutexLock lock(&mu_);
    if (v1::Rollout* active = ActiveRollout(fingerprint)) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "model %s already has rollout %s (%s, to version %d); promote, abort or finish it "
          "first",
          fingerprint.substr(0, 16), active->rollout_id(), StateName(active->state()),
          active->target_version()));
    }
    auto it = state_.baselines().find(fingerprint);
    const uint64_t from = it == state_.baselines().end() ? 0 : it->second;
    v1::Rollout r;
    state_.set_next_rollout_number(state_.next_rollout_number() + 1);
    r.set_rollout_id(absl::StrFormat("r%d", state_.next_rollout_number()));
    r.set_model_fingerprint(fingerprint);
    r.set_model_name(model_name.empty() ? record->model_name : model_name);
    r.set_from_version(from);
    r.set_target_version(target);
    for (uint32_t s : steps) r.add_steps(s);
    r.set_state(v1::ROLLOUT_RUNNING);
    r.set_label_selector(selector);
    ToTimestamp(absl::Now(), r.mutable_create_time());
    Touch(r);
    (*state_.mutable_baselines())[fingerprint] = from;
    *state_.add_rollouts() = r;
    absl::Status s = Save();
    if (!s.ok()) {
      state_.mutable_rollouts()->RemoveLast();
      return s;
    }
    spdlog::info(
        "event=rollout_created rollout={} model={} from={} to={} steps=[{}] selector=\"{}\"",
        r.rollout_id(), fingerprint.substr(0, 16), from, target, absl::StrJoin(steps, ","),
        selector);
    Reconcile();
    out = *FindRollout(r.rollout_id());
  }
  NotifyWatchers();
  return out;
}

absl::StatusOr<v1::Rollout> RolloutController::GetRollout(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  for (const v1::Rollout& r : state_.rollouts()) {
    if (r.rollout_id() == id) return r;
  }
  return absl::NotFoundError(absl::StrFormat("rollout_id \"%s\" is not a rollout", id));
}

std::vector<v1::Rollout> RolloutController::ListRollouts() const {
  absl::MutexLock lock(&mu_);
  return {state_.rollouts().begin(), state_.rollouts().end()};
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
    const v1::Rollout before = *r;
    absl::Status s = change(*r);
    if (!s.ok()) return s;
    Touch(*r);
    s = Save();
    if (!s.ok()) {
      *r = before;
      return s;
    }
    Reconcile();
    out = *FindRollout(id);
  }
  NotifyWatchers();
  return out;
}

absl::StatusOr<v1::Rollout> RolloutController::Pause(const std::string& id) {
  return Operate(id, [](v1::Rollout& r) {
    if (r.state() != v1::ROLLOUT_RUNNING) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "rollout %s is %s; only a running rollout pauses", r.rollout_id(), StateName(r.state())));
    }
    r.set_state(v1::ROLLOUT_PAUSED);
    r.set_state_reason("paused by an operator");
    spdlog::info("event=rollout_paused rollout={} reason=operator", r.rollout_id());
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::Rollout> RolloutController::Resume(const std::string& id) {
  return Operate(id, [this](v1::Rollout& r) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (r.state() != v1::ROLLOUT_PAUSED) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "rollout %s is %s; only a paused rollout resumes", r.rollout_id(), StateName(r.state())));
    }
    r.set_state(v1::ROLLOUT_RUNNING);
    r.set_state_reason("");
    // Workers that refused the target are offered it again.
    for (auto& [wid, w] : workers_) {
      if (!w.last_ack.applied() && w.last_ack.version() == r.target_version()) w.has_sent = false;
    }
    spdlog::info("event=rollout_resumed rollout={}", r.rollout_id());
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::Rollout> RolloutController::Promote(const std::string& id) {
  return Operate(id, [](v1::Rollout& r) {
    if (!IsActive(r)) {
      return absl::FailedPreconditionError(
          absl::StrFormat("rollout %s is %s; only a running or paused rollout is promoted",
                          r.rollout_id(), StateName(r.state())));
    }
    r.set_current_step(r.steps_size() - 1);
    r.set_state(v1::ROLLOUT_RUNNING);
    r.set_state_reason("promoted to 100% by an operator");
    spdlog::info("event=rollout_promoted rollout={}", r.rollout_id());
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::Rollout> RolloutController::Abort(const std::string& id) {
  return Operate(id, [this](v1::Rollout& r) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    if (!IsActive(r)) {
      return absl::FailedPreconditionError(
          absl::StrFormat("rollout %s is %s; only a running or paused rollout is aborted",
                          r.rollout_id(), StateName(r.state())));
    }
    r.set_state(v1::ROLLOUT_ABORTED);
    r.set_state_reason(
        absl::StrFormat("aborted by an operator; workers go back to version %d", r.from_version()));
    (*state_.mutable_baselines())[r.model_fingerprint()] = r.from_version();
    spdlog::info("event=rollout_aborted rollout={} back_to={}", r.rollout_id(), r.from_version());
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::Pin> RolloutController::SetPin(const v1::Pin& pin) {
  if (pin.selector_case() == v1::Pin::SELECTOR_NOT_SET ||
      (pin.has_worker_id() && pin.worker_id().empty())) {
    return absl::InvalidArgumentError("pin: give worker_id or label");
  }
  if (pin.has_label()) {
    auto parsed = ParseSelector(pin.label(), "label");
    if (!parsed.ok()) return parsed.status();
    if (parsed->size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("label \"%s\": a pin names one key=value", pin.label()));
    }
  }
  auto strategy = StrategyOf(pin.model(), pin.version());
  if (!strategy.ok()) return strategy.status();
  {
    absl::MutexLock lock(&mu_);
    auto* pins = state_.mutable_pins();
    bool replaced = false;
    for (v1::Pin& p : *pins) {
      if (p.selector_case() == pin.selector_case() &&
          (pin.has_worker_id() ? p.worker_id() == pin.worker_id() : p.label() == pin.label())) {
        p = pin;
        replaced = true;
      }
    }
    if (!replaced) *pins->Add() = pin;
    absl::Status s = Save();
    if (!s.ok()) return s;
    spdlog::info("event=pin_set {} model={} version={}", PinName(pin), pin.model().substr(0, 16),
                 pin.version());
    Reconcile();
  }
  NotifyWatchers();
  return pin;
}

absl::StatusOr<std::vector<v1::Pin>> RolloutController::ClearPin(const v1::Pin& pin) {
  std::vector<v1::Pin> out;
  {
    absl::MutexLock lock(&mu_);
    auto* pins = state_.mutable_pins();
    int found = -1;
    for (int i = 0; i < pins->size(); ++i) {
      const v1::Pin& p = pins->Get(i);
      if (p.selector_case() == pin.selector_case() &&
          (pin.has_worker_id() ? p.worker_id() == pin.worker_id() : p.label() == pin.label())) {
        found = i;
      }
    }
    if (found < 0) {
      return absl::NotFoundError(absl::StrFormat("no pin on %s", PinName(pin)));
    }
    pins->DeleteSubrange(found, 1);
    absl::Status s = Save();
    if (!s.ok()) return s;
    spdlog::info("event=pin_cleared {}", PinName(pin));
    Reconcile();
    out.assign(pins->begin(), pins->end());
  }
  NotifyWatchers();
  return out;
}

std::vector<v1::Pin> RolloutController::ListPins() const {
  absl::MutexLock lock(&mu_);
  return {state_.pins().begin(), state_.pins().end()};
}

v1::FleetStatus RolloutController::Fleet() const {
  absl::MutexLock lock(&mu_);
  v1::FleetStatus out;
  for (const auto& [id, w] : workers_) {
    v1::WorkerStatus* s = out.add_workers();
    s->set_worker_id(id);
    s->set_address(w.hello.address());
    s->set_model_fingerprint(w.hello.model_fingerprint());
    s->set_model_name(w.hello.model_name());
    *s->mutable_labels() = w.hello.labels();
    s->set_connected(w.channel != nullptr);
    s->set_current_version(w.current_version);
    s->set_current_strategy_id(w.current_id);
    s->set_has_assignment(w.has_assignment);
    s->set_assigned_version(w.assigned_version);
    s->set_assignment_cause(w.cause);
    *s->mutable_last_ack() = w.last_ack;
    if (w.last_ack_time != absl::InfinitePast()) {
      ToTimestamp(w.last_ack_time, s->mutable_last_ack_time());
    }
    ToTimestamp(w.last_seen, s->mutable_last_seen());
    *s->mutable_load() = w.load;
    s->set_owning_layers(w.owning_layers);
    s->set_n_layers(w.n_layers);
  }
  for (const v1::Rollout& r : state_.rollouts()) {
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
