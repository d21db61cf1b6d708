// The registry's C++ records on the wire (kvshare.v1.StrategyRecord). The Timestamp
// conversions it uses are proto/wire/timestamp_wire.h (included for its users).
#pragma once

#include "absl/status/statusor.h"
#include "kvshare/v1/registry.pb.h"
#include "proto/wire/strategy_wire.h"
#include "proto/wire/timestamp_wire.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

void ToProto(const StrategyRecord& record, v1::StrategyRecord* out);
// Validates the strategy (FromProto of SharingStrategy) and that it is bound to the record's
// model; InvalidArgument naming the field otherwise. Projections come from `resolve`
// (strategy_wire.h).
absl::StatusOr<StrategyRecord> FromProto(const v1::StrategyRecord& msg,
                                         const ProjectionsResolver& resolve = nullptr);

}  // namespace kvshare
