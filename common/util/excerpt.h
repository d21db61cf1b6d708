// A value as an error message may echo it: cut to a bounded size, with the full size said.
#pragma once

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"
#include "common/limits.h"

namespace kvshare {

// `s` itself when it has at most `max_bytes` bytes; otherwise its first `max_bytes` bytes
// followed by "...(N bytes)". Bytes that are not printable ASCII are written as \xHH, so the
// excerpt is always safe to put in a status message, a log line or gRPC metadata.
std::string Excerpt(absl::string_view s, size_t max_bytes = kMaxEchoBytes);

}  // namespace kvshare
