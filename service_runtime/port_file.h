// The port a server listens on, written to a file for whoever started it (tests, scripts using
// --port 0).
#pragma once

#include <string>

#include "absl/status/status.h"

namespace kvshare::runtime {

// Writes "<port>\n" atomically: a reader sees the whole number or no file.
absl::Status WritePortFile(const std::string& path, int port);

}  // namespace kvshare::runtime
