// Logging set-up for a service binary: spdlog to stderr, one event per line, in one of two
// formats (--log-format):
//
//   logfmt (default)  ts=2026-12-06T06:09:21.123Z level=info event=ready address=0.0.0.0:50051
//   json              {"ts":"2026-12-06T06:09:21.123Z","level":"info","event":"ready",...}
//
// Call sites write "event=<name> key={} ..." with untrusted values wrapped in LogValue
// (log_value.h), which quotes and escapes them. The sink also escapes any control byte left
// in a message, so no value can start a second line. In json the message's logfmt fields
// become the object's string fields after ts and level (a repeated key keeps its first
// value, so a message cannot override ts or level); a message that is not logfmt is kept
// whole as "msg".
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "spdlog/formatter.h"

namespace kvshare::runtime {

// The values --log-format takes: "logfmt", "json".
const std::vector<std::string>& LogFormats();

// The spdlog formatter for `format` (one of LogFormats(); anything else is logfmt).
std::unique_ptr<spdlog::formatter> MakeLogFormatter(const std::string& format);

// InvalidArgument naming the level when it is not one of trace, debug, info, warn, error,
// critical, off, or naming the format when it is not one of LogFormats().
absl::Status SetUpServiceLogging(const std::string& logger_name, const std::string& level,
                                 const std::string& format = "logfmt");

}  // namespace kvshare::runtime
