#include "search_service/server/fleet_state_file.h"

#include <filesystem>
#include <map>
#include <set>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "common/util/file.h"
#include "google/protobuf/util/json_util.h"
#include "search_service/server/rollout_policy.h"

namespace kvshare {
namespace {

namespace fs = std::filesystem;

constexpr char kStateFile[] = "state.json";
constexpr char kMarkerFile[] = "STATE_WRITTEN";
constexpr size_t kShownChars = 64;

// A value as messages show it: quoted, cut after kShownChars.
std::string Shown(const std::string& value) {
  if (value.size() <= kShownChars) return absl::StrFormat("\"%s\"", value);
  return absl::StrFormat("\"%s...\" (%d bytes)", value.substr(0, kShownChars), value.size());
}

absl::Status Invalid(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrFormat("%s: %s", path, what));
}

// Whether `path` exists; an error other than "no such file" is reported, not taken as absent.
absl::StatusOr<bool> Exists(const std::string& path) {
  std::error_code ec;
  const bool exists = fs::exists(path, ec);
  if (ec) return absl::InternalError(absl::StrFormat("cannot stat %s: %s", path, ec.message()));
  return exists;
}

// The n of "r<n>", or 0 when the id is not of that form.
uint64_t RolloutNumber(const std::string& id) {
  uint64_t n = 0;
  if (id.size() < 2 || id[0] != 'r') return 0;
  for (size_t i = 1; i < id.size(); ++i) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(id[i]))) return 0;
  }
  if (!absl::SimpleAtoi(id.substr(1), &n)) return 0;
  return n;
}

absl::Status ValidateRollout(const v1::Rollout& r, const std::string& field,
                             const VersionExists& version_exists, const std::string& path) {
  if (r.model_fingerprint().empty()) {
    return Invalid(path,
                   absl::StrFormat("%s.model_fingerprint is empty (a model expected)", field));
  }
  switch (r.state()) {
    case v1::ROLLOUT_RUNNING:
    case v1::ROLLOUT_PAUSED:
    case v1::ROLLOUT_COMPLETED:
    case v1::ROLLOUT_ABORTED:
      break;
    default:
      return Invalid(path, absl::StrFormat("%s.state %d is not a rollout state (running, paused, "
                                           "completed or aborted expected)",
                                           field, static_cast<int>(r.state())));
  }
  if (r.steps_size() == 0) {
    return Invalid(path,
                   absl::StrFormat("%s.steps is empty (percents ending at 100 expected)", field));
  }
  for (int i = 0; i < r.steps_size(); ++i) {
    if (r.steps(i) < 1 || r.steps(i) > 100 || (i > 0 && r.steps(i) <= r.steps(i - 1))) {
      return Invalid(path, absl::StrFormat("%s.steps[%d] %d: percents in [1, 100], increasing, "
                                           "expected",
                                           field, i, r.steps(i)));
    }
  }
  if (r.steps(r.steps_size() - 1) != 100) {
    return Invalid(path, absl::StrFormat("%s.steps[%d] %d: the last step must be 100", field,
                                         r.steps_size() - 1, r.steps(r.steps_size() - 1)));
  }
  if (r.current_step() >= static_cast<uint32_t>(r.steps_size())) {
    return Invalid(path, absl::StrFormat("%s.current_step %d is not below the %d steps", field,
                                         r.current_step(), r.steps_size()));
  }
  auto selector = ParseLabelSelector(r.label_selector(), field + ".label_selector");
  if (!selector.ok()) return Invalid(path, std::string(selector.status().message()));
  std::set<std::string> selected;
  for (const std::string& w : r.selected_workers()) {
    if (!selected.insert(w).second) {
      return Invalid(path, absl::StrFormat("%s.selected_workers names worker %s twice (each "
                                           "worker once expected)",
                                           field, Shown(w)));
    }
  }
  if (r.target_version() < 1 || !version_exists(r.model_fingerprint(), r.target_version())) {
    return Invalid(path, absl::StrFormat("%s.target_version %d is not a published version of "
                                         "model %s",
                                         field, r.target_version(), Shown(r.model_fingerprint())));
  }
  if (!version_exists(r.model_fingerprint(), r.from_version())) {
    return Invalid(path, absl::StrFormat("%s.from_version %d is not a version of model %s", field,
                                         r.from_version(), Shown(r.model_fingerprint())));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateFleetState(const v1::FleetControlState& state,
                                const VersionExists& version_exists, const std::string& path) {
  std::set<std::string> ids;
  std::map<std::string, std::string> active;  // fingerprint -> its active rollout
  for (int i = 0; i < state.rollouts_size(); ++i) {
    const v1::Rollout& r = state.rollouts(i);
    const std::string field = absl::StrFormat("rollouts[%d]", i);
    const uint64_t n = RolloutNumber(r.rollout_id());
    if (n == 0) {
      return Invalid(path, absl::StrFormat("%s.rollout_id %s is not r<number> (r1, r2, ...)", field,
                                           Shown(r.rollout_id())));
    }
    if (!ids.insert(r.rollout_id()).second) {
      return Invalid(path, absl::StrFormat("%s.rollout_id %s is used twice (unique ids expected)",
                                           field, Shown(r.rollout_id())));
    }
    if (n > state.next_rollout_number()) {
      return Invalid(path,
                     absl::StrFormat("next_rollout_number %d is below %d, the number of "
                                     "%s.rollout_id %s (at least every rollout's number "
                                     "expected, so that new ids are not reused)",
                                     state.next_rollout_number(), n, field, Shown(r.rollout_id())));
    }
    absl::Status s = ValidateRollout(r, field, version_exists, path);
    if (!s.ok()) return s;
    if (IsActive(r)) {
      auto [it, inserted] = active.emplace(r.model_fingerprint(), r.rollout_id());
      if (!inserted) {
        return Invalid(path, absl::StrFormat("%s.rollout_id %s is active for model %s, as is "
                                             "rollout %s (one active rollout per model expected)",
                                             field, Shown(r.rollout_id()),
                                             Shown(r.model_fingerprint()), Shown(it->second)));
      }
    }
  }
  std::set<std::pair<int, std::string>> pinned;
  for (int i = 0; i < state.pins_size(); ++i) {
    const v1::Pin& p = state.pins(i);
    const std::string field = absl::StrFormat("pins[%d]", i);
    absl::Status s = ValidatePin(p);
    if (!s.ok()) return Invalid(path, absl::StrFormat("%s: %s", field, s.message()));
    if (!pinned.emplace(p.selector_case(), p.has_worker_id() ? p.worker_id() : p.label()).second) {
      return Invalid(path, absl::StrFormat("%s: a second pin on %s (one pin per worker id or "
                                           "label expected)",
                                           field, Shown(PinName(p))));
    }
    if (p.model().empty() || !version_exists(p.model(), p.version())) {
      return Invalid(path, absl::StrFormat("%s.version %d is not a version of model %s", field,
                                           p.version(), Shown(p.model())));
    }
  }
  for (const auto& [fingerprint, version] : state.baselines()) {
    if (fingerprint.empty() || !version_exists(fingerprint, version)) {
      return Invalid(path, absl::StrFormat("baselines[%s] %d is not a version of that model",
                                           Shown(fingerprint), version));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::FleetControlState> ReadFleetState(const std::string& dir,
                                                     const VersionExists& version_exists) {
  const std::string path = absl::StrFormat("%s/%s", dir, kStateFile);
  const std::string marker = absl::StrFormat("%s/%s", dir, kMarkerFile);
  auto state_exists = Exists(path);
  if (!state_exists.ok()) return state_exists.status();
  auto marker_exists = Exists(marker);
  if (!marker_exists.ok()) return marker_exists.status();
  v1::FleetControlState state;
  if (!*state_exists) {
    if (*marker_exists) {
      return absl::DataLossError(absl::StrFormat(
          "%s is missing, but %s says it was written: the fleet state (rollouts, pins, "
          "baselines) is lost. Restore state.json, or remove %s to start with an empty fleet "
          "state on purpose",
          path, marker, marker));
    }
    return state;
  }
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) return absl::InternalError(absl::StrFormat("cannot stat %s: %s", path, ec.message()));
  if (size > kMaxFleetStateBytes) {
    return Invalid(path, absl::StrFormat("%d bytes is over the limit of %d bytes for a fleet "
                                         "state",
                                         size, kMaxFleetStateBytes));
  }
  auto text = ReadFileToString(path);
  if (!text.ok()) return text.status();
  return ParseFleetState(*text, *marker_exists ? marker : "", version_exists, path);
}

absl::StatusOr<v1::FleetControlState> ParseFleetState(const std::string& text,
                                                      const std::string& written_marker,
                                                      const VersionExists& version_exists,
                                                      const std::string& path) {
  if (text.size() > kMaxFleetStateBytes) {
    return Invalid(path, absl::StrFormat("%d bytes is over the limit of %d bytes for a fleet "
                                         "state",
                                         text.size(), kMaxFleetStateBytes));
  }
  v1::FleetControlState state;
  auto parsed = google::protobuf::util::JsonStringToMessage(
      text, &state, google::protobuf::util::JsonParseOptions());
  if (!parsed.ok()) {
    return absl::DataLossError(absl::StrFormat("%s does not parse as FleetControlState: %s", path,
                                               parsed.ToString().substr(0, 4 * kShownChars)));
  }
  if (!written_marker.empty() && state.generation() == 0) {
    return Invalid(path, absl::StrFormat("generation 0, but %s says a state was written "
                                         "(generation >= 1 expected): the fleet state was "
                                         "emptied or replaced. Restore it, or remove both "
                                         "to start with an empty fleet state on purpose",
                                         written_marker));
  }
  absl::Status valid = ValidateFleetState(state, version_exists, path);
  if (!valid.ok()) return valid;
  return state;
}

absl::Status WriteFleetState(const std::string& dir, v1::FleetControlState* state) {
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  print.add_whitespace = true;
  state->set_generation(state->generation() + 1);
  std::string json;
  auto printed = google::protobuf::util::MessageToJsonString(*state, &json, print);
  absl::Status s = printed.ok()
                       ? WriteFileAtomically(absl::StrFormat("%s/%s", dir, kStateFile), json)
                       : absl::InternalError(printed.ToString());
  if (!s.ok()) {
    state->set_generation(state->generation() - 1);
    return s;
  }
  // After the state, never before: a crash in between must not leave a marker with no state.
  const std::string marker = absl::StrFormat("%s/%s", dir, kMarkerFile);
  auto marker_exists = Exists(marker);
  if (!marker_exists.ok()) return marker_exists.status();
  if (*marker_exists) return absl::OkStatus();
  return WriteFileAtomically(
      marker,
      "state.json in this directory has been written: a missing state.json, or one with "
      "generation 0, is a lost fleet state (refused at start), not an empty one. Remove this "
      "file only to start with an empty fleet state on purpose.\n");
}

}  // namespace kvshare
