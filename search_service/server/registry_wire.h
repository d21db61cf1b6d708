// The registry's C++ records on the wire (kvshare.v1.StrategyRecord), and absl::Time as
// google.protobuf.Timestamp.
#pragma once

#include "absl/time/time.h"
#include "google/protobuf/timestamp.pb.h"
#include "kvshare/v1/registry.pb.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

void ToProto(const StrategyRecord& record, v1::StrategyRecord* out);
void ToTimestamp(absl::Time t, google::protobuf::Timestamp* out);
absl::Time FromTimestamp(const google::protobuf::Timestamp& t);

}  // namespace kvshare
