// Whole-file reads and crash-safe writes.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvshare {

// NotFound / PermissionDenied naming the path and the OS error.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);
// The same, reading at most `max_bytes`: a longer file (or an endless one, /dev/zero) is
// InvalidArgument naming the path and the limit, after reading no more than max_bytes + 1.
absl::StatusOr<std::string> ReadFileToString(const std::string& path, size_t max_bytes);
// Writes to a temporary file beside `path`, fsyncs it, renames it over `path`, and fsyncs the
// directory: after a crash the file holds either the old or the new content, never a mix.
absl::Status WriteFileAtomically(const std::string& path, const std::string& content);

}  // namespace kvshare
