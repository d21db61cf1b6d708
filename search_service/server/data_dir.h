// The search service's data directory on disk: directories created durably (the new entry is
// fsynced into its parent, so a file written into it after a crash is still reachable), and an
// exclusive lock so that one process at a time owns a directory's contents.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvshare {

// Creates `path` and any missing parents, fsyncing each new one into its parent.
absl::Status MakeDirectoryDurably(const std::string& path);
// fsync of a directory: makes renames and creations inside it durable.
absl::Status SyncDirectory(const std::string& path);

// An exclusive advisory lock (flock) on <dir>/LOCK, held until destruction; the kernel drops
// it when the process dies, so a crashed owner never leaves it stuck.
class DirectoryLock {
 public:
  // FailedPrecondition when another process holds it.
  static absl::StatusOr<std::unique_ptr<DirectoryLock>> Acquire(const std::string& dir);
  ~DirectoryLock();

 private:
  explicit DirectoryLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace kvshare
