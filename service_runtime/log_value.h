// Log values in logfmt, escaped so that no value can forge a field or a line.
//
// Every service log line is `key=value` pairs (service_logging.h). A value written with
// LogValue is emitted bare when it is a non-empty run of printable ASCII other than `"`, `=`
// and `\`, and otherwise in double quotes with `"`, `\`, newline, carriage return and tab
// escaped as \" \\ \n \r \t and any other control byte as \u00XX — so a value holding
// `x" level=critical` or a newline stays one value of one line:
//
//   spdlog::warn("event=worker_nack worker_id={} error={}", LogValue(id), LogValue(message));
//
// Bytes >= 0x80 (UTF-8) pass through unchanged. ParseLogfmt reads such a line back (the JSON
// log format uses it); it accepts exactly what LogValue writes, after keys of [A-Za-z0-9_.-].
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "spdlog/fmt/fmt.h"

namespace kvshare::runtime {

// The logfmt form of `value`: bare or quoted-and-escaped, as above.
std::string LogfmtValue(std::string_view value);

// `text` with every control byte (< 0x20 and 0x7f) escaped as in a quoted value; the rest as
// it is. What the log sink applies to a whole message, so a value logged without LogValue
// still cannot start a second line.
std::string EscapeControlBytes(std::string_view text);

// A value to format with "{}" into a log line: written as LogfmtValue(text).
struct LogValue {
  explicit LogValue(std::string_view v) : text(v) {}
  std::string_view text;
};

// The fields of a logfmt line "k1=v1 k2=\"v 2\" ...", values unescaped; InvalidArgument naming
// the offset of the first token that is not `key=value` as LogfmtValue writes it.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseLogfmt(std::string_view line);

}  // namespace kvshare::runtime

template <>
struct fmt::formatter<kvshare::runtime::LogValue> : fmt::formatter<std::string_view> {
  template <typename FormatContext>
  auto format(const kvshare::runtime::LogValue& v, FormatContext& ctx) const {
    const std::string escaped = kvshare::runtime::LogfmtValue(v.text);
    return fmt::formatter<std::string_view>::format(std::string_view(escaped), ctx);
  }
};
