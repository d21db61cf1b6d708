// ProjectionBlobs: the registry's side of moving output projections blobs (issue 18;
// StrategyRegistry.UploadProjections and GetProjections in registry.proto) over a
// StrategyStore, which keeps them content-addressed beside the records.
//
// Uploads arrive in pieces of at most kProjectionChunkBytes, in order; the partial blob is held
// in memory until its last piece, then checked against its hash and stored. At most
// kMaxPendingUploads partial blobs are held (the oldest is dropped for a new one: its uploader
// gets INVALID_ARGUMENT at its next piece and starts over), so memory stays bounded by that
// many blobs of at most kMaxProjectionBlobBytes. Reads are answered from a cache of the
// kCachedBlobs most recently used blobs (a worker fetches a blob piece by piece; without it
// each piece would re-read and re-hash the whole blob from the store).
//
// Thread-safe; the store must outlive it.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kvshare/v1/registry.pb.h"
#include "search_service/server/strategy_store.h"

namespace kvshare {

class ProjectionBlobs {
 public:
  static constexpr size_t kMaxPendingUploads = 4;
  static constexpr size_t kCachedBlobs = 4;

  explicit ProjectionBlobs(StrategyStore* store) : store_(store) {}

  absl::StatusOr<v1::UploadProjectionsResponse> Upload(const v1::UploadProjectionsRequest& request);
  absl::StatusOr<v1::GetProjectionsResponse> Get(const v1::GetProjectionsRequest& request);
  // The blob `header` names, from the cache or the store (NotFound naming the hash).
  absl::StatusOr<std::shared_ptr<const OutputProjections>> Resolve(const ProjectionsHeader& header);

 private:
  struct Pending {
    ProjectionsHeader header;
    std::string data;
  };
  void Remember(std::shared_ptr<const OutputProjections> p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  StrategyStore* const store_;
  absl::Mutex mu_;
  // By sha256, oldest first.
  std::deque<std::pair<std::string, Pending>> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<const OutputProjections>> cache_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvshare
