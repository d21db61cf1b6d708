// A CreateSearchJobRequest checked and turned into a search the library can run: the catalog
// model (loaded on first use), the calibration set, the greedy options. Every check happens
// here, before a job exists; errors name the request's field (the proto spelling), its value
// and the limit. Model-free checks come first, so a malformed request costs no model load.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kvshare/v1/search.pb.h"
#include "search_service/search_request.h"
#include "search_service/server/model_catalog.h"

namespace kvshare {

struct PreparedSearchJob {
  std::shared_ptr<const CatalogModel> model;
  PreparedSearch search;
  int64_t calibration_text_bytes = 0;
};

// InvalidArgument / NotFound / FailedPrecondition as kvshare.v1.SearchService.CreateSearchJob
// documents them.
absl::StatusOr<PreparedSearchJob> PrepareSearchJob(const v1::CreateSearchJobRequest& request,
                                                   ModelCatalog& catalog);

// Hex SHA-256 of the request's deterministic serialisation without its idempotency_key: a
// retried create must match it.
std::string SearchJobRequestHash(const v1::CreateSearchJobRequest& request);

}  // namespace kvshare
