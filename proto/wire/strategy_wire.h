// SharingStrategy <-> kvshare.v1.SharingStrategy.
#pragma once

#include <functional>
#include <memory>

#include "absl/status/statusor.h"
#include "common/strategy/projections_header.h"
#include "common/strategy/sharing_strategy.h"
#include "kvshare/v1/strategy.pb.h"

namespace kvshare {

// Finds the blob a strategy's output_projections names (the registry's store, a fetch from the
// registry, a cache); its errors come back unchanged from FromProto.
using ProjectionsResolver = std::function<absl::StatusOr<std::shared_ptr<const OutputProjections>>(
    const ProjectionsHeader& header)>;

// Carries attention_dropped and the projections' header (output_projections), never the blob.
void ToProto(const SharingStrategy& strategy, v1::SharingStrategy* out);
// Validates like SharingStrategy::Create; a non-empty `id` must match the content. A message
// with output_projections needs `resolve` (FailedPrecondition naming the hash without one);
// the header is checked (InvalidArgument naming strategy.output_projections) before it is
// resolved.
absl::StatusOr<SharingStrategy> FromProto(const v1::SharingStrategy& msg,
                                          const ProjectionsResolver& resolve = nullptr);
// kvshare.v1.OutputProjectionsRef <-> ProjectionsHeader (the type by name; an unknown name is
// InvalidArgument naming `where`.type). FromProto does not check the rest
// (CheckProjectionsHeader does).
void ToProto(const ProjectionsHeader& header, v1::OutputProjectionsRef* out);
absl::StatusOr<ProjectionsHeader> FromProto(const v1::OutputProjectionsRef& msg,
                                            const std::string& where);
// Layers that keep their own cache (kv_source[l] == l, not dropped), as
// SharingStrategy::owning_layers.
int OwningLayers(const v1::SharingStrategy& msg);

}  // namespace kvshare
