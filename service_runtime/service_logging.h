// Logging set-up for a service binary: spdlog to stderr, one line per event as
// "<time> level=<l> event=... key=value", the level by name.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace kvshare::runtime {

// InvalidArgument naming the level when it is not one of trace, debug, info, warn, error,
// critical, off.
absl::Status SetUpServiceLogging(const std::string& logger_name, const std::string& level);

}  // namespace kvshare::runtime
