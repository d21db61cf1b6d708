#include "search_service/server/rollout_policy.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/engine/quality_probe.h"
#include "search_service/server/registry_wire.h"

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

bool LabelsMatch(const std::map<std::string, std::string>& want, const FleetWorker& w) {
  for (const auto& [k, v] : want) {
    auto it = w.labels.find(k);
    if (it == w.labels.end() || it->second != v) return false;
  }
  return true;
}

bool SameSelector(const v1::Pin& a, const v1::Pin& b) {
  return a.selector_case() == b.selector_case() &&
         (b.has_worker_id() ? a.worker_id() == b.worker_id() : a.label() == b.label());
}

void Touch(v1::Rollout& r, absl::Time now) { ToTimestamp(now, r.mutable_update_time()); }

// One rollout's selection and gate (see AdvanceRollouts).
bool AdvanceRollout(RolloutPolicyState& state, v1::Rollout& r, const std::string& target_id,
                    const PolicyClock& clock, PolicyEvents* events) {
  bool changed = false;
  while (r.state() == v1::ROLLOUT_RUNNING) {
    std::vector<std::string> eligible;
    for (const auto& [id, w] : state.workers) {
      if (Eligible(state.control, r, w)) eligible.push_back(id);
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
      events->push_back(
          absl::StrFormat("event=rollout_selected rollout=%s worker_id=%s step=%d "
                          "percent=%d",
                          r.rollout_id(), id, r.current_step() + 1, percent));
    }
    // Gate: every selected worker runs the target. One away for longer than the expiry no
    // longer holds the rollout up (it gets the target when it returns).
    uint32_t acked = 0;
    bool pending = false;
    for (const std::string& id : selected) {
      auto it = state.workers.find(id);
      if (it == state.workers.end()) {
        if (clock.now - clock.started < clock.worker_expiry) pending = true;
        continue;
      }
      const FleetWorker& w = it->second;
      if (PinFor(state.control, w) != nullptr) continue;  // pinned away from the rollout
      if (w.connected && w.current_version == r.target_version() &&
          w.current_strategy_id == target_id) {
        ++acked;
      } else if (w.connected ||
                 clock.now - std::max(w.last_seen, clock.started) < clock.worker_expiry) {
        pending = true;
      }
    }
    r.set_eligible_workers(eligible.size());
    r.set_acked_workers(acked);
    if (pending || eligible.empty() || selected_eligible < want) break;
    if (r.current_step() + 1 < static_cast<uint32_t>(r.steps_size())) {
      r.set_current_step(r.current_step() + 1);
      events->push_back(absl::StrFormat("event=rollout_step rollout=%s step=%d/%d percent=%d",
                                        r.rollout_id(), r.current_step() + 1, r.steps_size(),
                                        r.steps(r.current_step())));
    } else {
      r.set_state(v1::ROLLOUT_COMPLETED);
      r.set_state_reason(absl::StrFormat("%d workers run version %d", acked, r.target_version()));
      (*state.control.mutable_baselines())[r.model_fingerprint()] = r.target_version();
      events->push_back(absl::StrFormat("event=rollout_completed rollout=%s version=%d workers=%d",
                                        r.rollout_id(), r.target_version(), acked));
    }
    Touch(r, clock.now);
    changed = true;
  }
  return changed;
}

}  // namespace

bool IsActive(const v1::Rollout& r) {
  return r.state() == v1::ROLLOUT_RUNNING || r.state() == v1::ROLLOUT_PAUSED;
}

std::string PinName(const v1::Pin& p) {
  return p.has_worker_id() ? absl::StrFormat("worker %s", p.worker_id())
                           : absl::StrFormat("label %s", p.label());
}

absl::StatusOr<std::map<std::string, std::string>> ParseLabelSelector(const std::string& selector,
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

std::vector<std::string> RolloutSelectionOrder(std::vector<std::string> ids) {
  std::sort(ids.begin(), ids.end(), [](const std::string& a, const std::string& b) {
    const uint64_t ha = StableHash(a), hb = StableHash(b);
    return ha != hb ? ha < hb : a < b;
  });
  return ids;
}

const v1::Pin* PinFor(const v1::FleetControlState& state, const FleetWorker& w) {
  for (const v1::Pin& p : state.pins()) {
    if (p.has_worker_id() && p.worker_id() == w.worker_id) return &p;
  }
  for (const v1::Pin& p : state.pins()) {
    if (!p.has_label()) continue;
    auto want = ParseLabelSelector(p.label(), "label");
    if (want.ok() && LabelsMatch(*want, w)) return &p;
  }
  return nullptr;
}

bool Eligible(const v1::FleetControlState& state, const v1::Rollout& r, const FleetWorker& w) {
  if (!w.connected || PinFor(state, w) != nullptr) return false;
  if (r.label_selector().empty()) return w.model_fingerprint == r.model_fingerprint();
  auto want = ParseLabelSelector(r.label_selector(), "label_selector");
  return want.ok() && LabelsMatch(*want, w);
}

std::optional<DesiredVersion> DesiredFor(const v1::FleetControlState& state, const FleetWorker& w) {
  if (const v1::Pin* p = PinFor(state, w)) {
    return DesiredVersion{p->model(), p->version(), absl::StrFormat("pin %s", PinName(*p))};
  }
  for (const v1::Rollout& r : state.rollouts()) {
    if (!IsActive(r) || !Eligible(state, r, w)) continue;
    const auto& sel = r.selected_workers();
    if (std::find(sel.begin(), sel.end(), w.worker_id) != sel.end()) {
      return DesiredVersion{
          r.model_fingerprint(), r.target_version(),
          absl::StrFormat("rollout %s step %d/%d (%d%%)", r.rollout_id(), r.current_step() + 1,
                          r.steps_size(), r.steps(r.current_step()))};
    }
  }
  auto it = state.baselines().find(w.model_fingerprint);
  if (it != state.baselines().end()) {
    return DesiredVersion{w.model_fingerprint, it->second, "baseline"};
  }
  return std::nullopt;
}

bool AdvanceRollouts(RolloutPolicyState& state, const StrategyIdOf& strategy_id_of,
                     const PolicyClock& clock, PolicyEvents* events) {
  bool changed = false;
  for (v1::Rollout& r : *state.control.mutable_rollouts()) {
    if (r.state() != v1::ROLLOUT_RUNNING) continue;
    const std::string target_id = strategy_id_of(r.model_fingerprint(), r.target_version());
    changed |= AdvanceRollout(state, r, target_id, clock, events);
  }
  return changed;
}

std::vector<std::string> PauseOnNack(v1::FleetControlState& state, const FleetWorker& w,
                                     const v1::StrategyAck& ack, absl::Time now) {
  std::vector<std::string> paused;
  if (ack.applied()) return paused;
  for (v1::Rollout& r : *state.mutable_rollouts()) {
    if (r.state() != v1::ROLLOUT_RUNNING || r.target_version() != ack.version() ||
        !Eligible(state, r, w)) {
      continue;
    }
    r.set_state(v1::ROLLOUT_PAUSED);
    r.set_state_reason(absl::StrFormat("worker %s NACKed version %d (%s): %s", w.worker_id,
                                       ack.version(), v1::NackReason_Name(ack.reason()),
                                       ack.error()));
    Touch(r, now);
    paused.push_back(r.rollout_id());
  }
  return paused;
}

std::optional<std::string> ProbeDisagreement(const v1::FleetControlState& state,
                                             const std::string& fingerprint,
                                             const v1::StrategyAck& ack) {
  if (!ack.applied() || !ack.has_probe()) return std::nullopt;
  const v1::QualityProbe* reference = nullptr;
  for (const v1::Rollout& r : state.rollouts()) {  // the latest rollout to the version wins
    if (r.model_fingerprint() == fingerprint && r.target_version() == ack.version() &&
        r.has_target_probe()) {
      reference = &r.target_probe();
    }
  }
  if (reference == nullptr) return std::nullopt;
  const double diff = std::abs(ack.probe().mean_nll() - reference->mean_nll());
  if (ack.probe().tokens() == reference->tokens() && diff <= kQualityProbeToleranceNats) {
    return std::nullopt;
  }
  return absl::StrFormat(
      "quality probe %.4f nats/token over %d tokens, the registry's %.4f over %d for version %d: "
      "%.4f apart, tolerance %.2f",
      ack.probe().mean_nll(), ack.probe().tokens(), reference->mean_nll(), reference->tokens(),
      ack.version(), diff, kQualityProbeToleranceNats);
}

absl::Status ValidateRolloutRequest(uint64_t target, std::vector<uint32_t>* steps,
                                    const std::string& selector) {
  if (target < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("target_version %d must be >= 1 (a published version)", target));
  }
  if (steps->empty()) *steps = {100};
  const std::vector<uint32_t>& s = *steps;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] < 1 || s[i] > 100) {
      return absl::InvalidArgumentError(
          absl::StrFormat("steps[%d] %d is not a percent in [1, 100]", i, s[i]));
    }
    if (i > 0 && s[i] <= s[i - 1]) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "steps[%d] %d must be above steps[%d] %d (steps increase)", i, s[i], i - 1, s[i - 1]));
    }
  }
  if (s.back() != 100) {
    return absl::InvalidArgumentError(
        absl::StrFormat("steps[%d] %d: the last step must be 100", s.size() - 1, s.back()));
  }
  return ParseLabelSelector(selector, "label_selector").status();
}

absl::StatusOr<v1::Rollout> StartRollout(v1::FleetControlState& state, const RolloutRequest& req,
                                         absl::Time now) {
  for (const v1::Rollout& active : state.rollouts()) {
    if (!IsActive(active) || active.model_fingerprint() != req.fingerprint) continue;
    return absl::FailedPreconditionError(absl::StrFormat(
        "model %s already has rollout %s (%s, to version %d); promote, abort or finish it first",
        req.fingerprint.substr(0, 16), active.rollout_id(), RolloutStateName(active.state()),
        active.target_version()));
  }
  auto it = state.baselines().find(req.fingerprint);
  const uint64_t from = it == state.baselines().end() ? 0 : it->second;
  state.set_next_rollout_number(state.next_rollout_number() + 1);
  v1::Rollout r;
  r.set_rollout_id(absl::StrFormat("r%d", state.next_rollout_number()));
  r.set_model_fingerprint(req.fingerprint);
  r.set_model_name(req.model_name);
  r.set_from_version(from);
  r.set_target_version(req.target_version);
  for (uint32_t s : req.steps) r.add_steps(s);
  r.set_state(v1::ROLLOUT_RUNNING);
  r.set_label_selector(req.label_selector);
  ToTimestamp(now, r.mutable_create_time());
  Touch(r, now);
  (*state.mutable_baselines())[req.fingerprint] = from;
  *state.add_rollouts() = r;
  return r;
}

absl::Status PauseRollout(v1::Rollout& r, absl::Time now) {
  if (r.state() != v1::ROLLOUT_RUNNING) {
    return absl::FailedPreconditionError(
        absl::StrFormat("rollout %s is %s; only a running rollout pauses", r.rollout_id(),
                        RolloutStateName(r.state())));
  }
  r.set_state(v1::ROLLOUT_PAUSED);
  r.set_state_reason("paused by an operator");
  Touch(r, now);
  return absl::OkStatus();
}

absl::Status ResumeRollout(v1::Rollout& r, absl::Time now) {
  if (r.state() != v1::ROLLOUT_PAUSED) {
    return absl::FailedPreconditionError(
        absl::StrFormat("rollout %s is %s; only a paused rollout resumes", r.rollout_id(),
                        RolloutStateName(r.state())));
  }
  r.set_state(v1::ROLLOUT_RUNNING);
  r.set_state_reason("");
  Touch(r, now);
  return absl::OkStatus();
}

absl::Status PromoteRollout(v1::Rollout& r, absl::Time now) {
  if (!IsActive(r)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("rollout %s is %s; only a running or paused rollout is promoted",
                        r.rollout_id(), RolloutStateName(r.state())));
  }
  r.set_current_step(r.steps_size() - 1);
  r.set_state(v1::ROLLOUT_RUNNING);
  r.set_state_reason("promoted to 100% by an operator");
  Touch(r, now);
  return absl::OkStatus();
}

absl::Status AbortRollout(v1::FleetControlState& state, v1::Rollout& r, absl::Time now) {
  if (!IsActive(r)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("rollout %s is %s; only a running or paused rollout is aborted",
                        r.rollout_id(), RolloutStateName(r.state())));
  }
  r.set_state(v1::ROLLOUT_ABORTED);
  r.set_state_reason(
      absl::StrFormat("aborted by an operator; workers go back to version %d", r.from_version()));
  (*state.mutable_baselines())[r.model_fingerprint()] = r.from_version();
  Touch(r, now);
  return absl::OkStatus();
}

absl::Status ValidatePin(const v1::Pin& pin) {
  if (pin.selector_case() == v1::Pin::SELECTOR_NOT_SET ||
      (pin.has_worker_id() && pin.worker_id().empty())) {
    return absl::InvalidArgumentError("pin: give worker_id or label");
  }
  if (pin.has_label()) {
    auto parsed = ParseLabelSelector(pin.label(), "label");
    if (!parsed.ok()) return parsed.status();
    if (parsed->size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("label \"%s\": a pin names one key=value", pin.label()));
    }
  }
  return absl::OkStatus();
}

void SetPin(v1::FleetControlState& state, const v1::Pin& pin) {
  bool replaced = false;
  for (v1::Pin& p : *state.mutable_pins()) {
    if (SameSelector(p, pin)) {
      p = pin;
      replaced = true;
    }
  }
  if (!replaced) *state.add_pins() = pin;
}

bool ClearPin(v1::FleetControlState& state, const v1::Pin& pin) {
  auto* pins = state.mutable_pins();
  int found = -1;
  for (int i = 0; i < pins->size(); ++i) {
    if (SameSelector(pins->Get(i), pin)) found = i;
  }
  if (found < 0) return false;
  pins->DeleteSubrange(found, 1);
  return true;
}

}  // namespace kvshare
