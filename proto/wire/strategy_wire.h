// SharingStrategy <-> kvshare.v1.SharingStrategy.
#pragma once

#include "absl/status/statusor.h"
#include "common/strategy/sharing_strategy.h"
#include "kvshare/v1/strategy.pb.h"

namespace kvshare {

void ToProto(const SharingStrategy& strategy, v1::SharingStrategy* out);
// Validates like SharingStrategy::Create; a non-empty `id` must match the content.
absl::StatusOr<SharingStrategy> FromProto(const v1::SharingStrategy& msg);
// Layers that keep their own cache (kv_source[l] == l), as SharingStrategy::owning_layers.
int OwningLayers(const v1::SharingStrategy& msg);

}  // namespace kvshare
