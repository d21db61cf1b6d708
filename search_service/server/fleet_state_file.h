// <dir>/state.json: the control plane's persisted state (kvshare.v1.FleetControlState as
// JSON: rollouts, pins, baselines), and the checks that keep a damaged or lost state from
// being read as an empty one.
//
// Each write is atomic (temporary, fsync, rename, fsync the directory) and bumps the state's
// `generation`; once a write has succeeded, a marker file, <dir>/STATE_WRITTEN, says so.
// Reading refuses with DataLoss naming the file, the field, the value (truncated) and what was
// expected:
//   - a state.json larger than kMaxFleetStateBytes, or one that does not parse as
//     FleetControlState (wrong types, unknown fields, bad JSON: the protobuf JSON parser
//     reports these as a status; nothing throws);
//   - STATE_WRITTEN present and state.json missing, or read back with generation 0 ("{}"): the
//     state was deleted or emptied;
//   - a state that breaks what the controller keeps true: rollout ids "r<n>", unique, with
//     n <= next_rollout_number (the next id is r<next_rollout_number + 1>); steps percents in
//     [1, 100], increasing, ending at 100, and current_step inside them; a known rollout
//     state; a label selector that parses; at most one active rollout per model; no worker
//     selected twice; pins naming a worker id or one label, at most one pin per worker id or
//     label; and every version a rollout, pin or baseline names present in the strategy store.
//
// Why refuse rather than start empty: an empty state silently forgets every rollout, pin and
// baseline — pinned workers lose their pins, the next rollout starts from version 0 and reuses
// ids already in logs and operators' hands. A refused start keeps the search service down
// until an operator acts, but the fleet keeps serving: workers keep their last good version
// while the control plane is away. To start empty on purpose, remove state.json and
// STATE_WRITTEN (or the whole directory). A state.json from before generations existed
// (generation 0, no marker) is read as it is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvshare/v1/registry.pb.h"

namespace kvshare {

inline constexpr size_t kMaxFleetStateBytes = size_t{64} << 20;

// Whether the strategy store has (fingerprint, version); version 0 (the identity) exists for a
// model with at least one published version (its layer count comes from them).
using VersionExists = std::function<bool(const std::string& fingerprint, uint64_t version)>;

// The state in `dir`; an empty one when neither state.json nor STATE_WRITTEN exists (a new
// directory). DataLoss as above; the files are left as they are, for an operator to look at.
absl::StatusOr<v1::FleetControlState> ReadFleetState(const std::string& dir,
                                                     const VersionExists& version_exists);

// The checks of ReadFleetState on a state's text (from a file or another store): size, parse,
// generation 0 although `written_marker` (non-empty: what says a state was written) exists,
// ValidateFleetState. `path` names where the text came from in messages.
absl::StatusOr<v1::FleetControlState> ParseFleetState(const std::string& text,
                                                      const std::string& written_marker,
                                                      const VersionExists& version_exists,
                                                      const std::string& path);

// Bumps state->generation and writes it to <dir>/state.json, then leaves the marker. On a
// failure `state` is as it was.
absl::Status WriteFleetState(const std::string& dir, v1::FleetControlState* state);

// The invariant checks of ReadFleetState alone; `path` names the file in messages.
absl::Status ValidateFleetState(const v1::FleetControlState& state,
                                const VersionExists& version_exists, const std::string& path);

}  // namespace kvshare
