// A CreateSearchJobRequest checked and turned into a search the library can run: the catalog
// model (loaded on first use), the calibration set, the selection rule, the held-out slice. Every
// check happens here, before a job exists; errors name the request's field (the proto spelling),
// its value and the limit. Model-free checks come first, so a malformed request costs no model
// load.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "kvshare/v1/search.pb.h"
#include "search_service/heldout_quality.h"
#include "search_service/projection_sets.h"
#include "search_service/search_request.h"
#include "search_service/server/model_catalog.h"

namespace kvshare {

struct PreparedSearchJob {
  std::shared_ptr<const CatalogModel> model;
  PreparedSearch search;  // search.selection: the request's method, best_of, lazy, R
  int64_t calibration_text_bytes = 0;
  // The held-out slice the strategy's quality is measured on (the calibration text after the
  // last calibration line); empty when heldout_tokens is 0.
  std::optional<HeldoutSlice> heldout;
  // With drop_attention: the fit and scoring sets of the drop search (after the held-out slice).
  std::optional<ProjectionSets> drop_sets;
};

// The request's defaults for the quality measurement.
inline constexpr int kDefaultHeldoutTokens = 16384;
inline constexpr int kDefaultHeldoutContext = 512;

// InvalidArgument / NotFound / FailedPrecondition as kvshare.v1.SearchService.CreateSearchJob
// documents them.
absl::StatusOr<PreparedSearchJob> PrepareSearchJob(const v1::CreateSearchJobRequest& request,
                                                   ModelCatalog& catalog);

// Hex SHA-256 of the request's deterministic serialisation without its idempotency_key: a
// retried create must match it.
std::string SearchJobRequestHash(const v1::CreateSearchJobRequest& request);

}  // namespace kvshare
