#include "search_service/server/fleet_state_store.h"

namespace kvshare {

absl::StatusOr<std::unique_ptr<DirectoryFleetState>> DirectoryFleetState::Open(
    const std::string& dir) {
  absl::Status s = MakeDirectoryDurably(dir);
  if (!s.ok()) return s;
  auto lock = DirectoryLock::Acquire(dir);
  if (!lock.ok()) return lock.status();
  return std::unique_ptr<DirectoryFleetState>(new DirectoryFleetState(dir, std::move(*lock)));
}

absl::StatusOr<v1::FleetControlState> DirectoryFleetState::Read(
    const VersionExists& version_exists) {
  return ReadFleetState(dir_, version_exists);
}

absl::Status DirectoryFleetState::Write(v1::FleetControlState* state) {
  return WriteFleetState(dir_, state);
}

}  // namespace kvshare
