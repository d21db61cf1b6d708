// A strategy's binding to a loaded model, across fingerprint versions (common/model/
// fingerprint.h). Strategies made before fingerprint v2 carry the v1 fingerprint of the same
// weights; they are recognised, refused with a message saying so, and re-bound only on request
// (`kvshare rebind`), never silently accepted or silently invalidated.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/model/model.h"
#include "common/strategy/sharing_strategy.h"

namespace kvshare {

// SharingStrategy::ValidateFor against the model's current fingerprint, except that a strategy
// bound to the model's v1 fingerprint is FailedPrecondition saying it was bound to fingerprint
// v1 and how to re-bind it.
absl::Status ValidateStrategyForModel(const SharingStrategy& strategy, const Model& model);

// The strategy bound to the model's current fingerprint, provenance kept. FailedPrecondition
// unless it is bound to this model's v1 fingerprint or already to its current one (then it is
// returned unchanged); InvalidArgument when the layer count differs.
absl::StatusOr<SharingStrategy> RebindStrategy(const SharingStrategy& strategy, const Model& model);

}  // namespace kvshare
