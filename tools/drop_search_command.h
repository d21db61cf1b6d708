// `kvshare search --drop-attention --target-layers K`: the calibrated attention-drop search
// (search_service/drop_search.h) run locally, its strategy written with its substitutes.
#pragma once

#include <string>
#include <vector>

#include "search_service/drop_search.h"
#include "search_service/heldout_quality.h"
#include "search_service/projection_sets.h"
#include "tools/session.h"

namespace kvshare::cli {

// Runs the drop search with `options` on `sets` (ranking on sets.score, fitting on sets.fit),
// measures the held-out quality on `heldout`, records it, and writes the strategy (and its
// blob) to `out`.
int RunDropSearch(const Session& session, const ProjectionSets& sets,
                  const DropSearchOptions& options, HeldoutSlice heldout, int threads,
                  const std::string& out);

}  // namespace kvshare::cli
