// absl::Time <-> google.protobuf.Timestamp.
#pragma once

#include "absl/time/time.h"
#include "google/protobuf/timestamp.pb.h"

namespace kvshare {

// Seconds and non-negative nanos (a time before the epoch borrows a second).
void ToTimestamp(absl::Time t, google::protobuf::Timestamp* out);
absl::Time FromTimestamp(const google::protobuf::Timestamp& t);

}  // namespace kvshare
