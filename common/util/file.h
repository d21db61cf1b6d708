// Whole-file reads and crash-safe writes.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvshare {

// NotFound / PermissionDenied naming the path and the OS error.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);
// Writes to a temporary file beside `path`, fsyncs it, renames it over `path`, and fsyncs the
// directory: after a crash the file holds either the old or the new content, never a mix.
absl::Status WriteFileAtomically(const std::string& path, const std::string& content);

}  // namespace kvshare
