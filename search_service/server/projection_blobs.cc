#include "search_service/server/projection_blobs.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "proto/wire/strategy_wire.h"
#include "spdlog/spdlog.h"

namespace kvshare {
namespace {

absl::StatusOr<ProjectionsHeader> CheckedHeader(const v1::UploadProjectionsRequest& r) {
  if (!r.has_ref()) return absl::InvalidArgumentError("ref is missing");
  auto h = FromProto(r.ref(), "ref");
  if (!h.ok()) return h.status();
  absl::Status s = CheckProjectionsHeader(*h, "ref");
  if (!s.ok()) return s;
  return h;
}

}  // namespace

void ProjectionBlobs::Remember(std::shared_ptr<const OutputProjections> p) {
  for (auto it = cache_.begin(); it != cache_.end(); ++it) {
    if ((*it)->sha256() == p->sha256()) {
      cache_.erase(it);
      break;
    }
  }
  cache_.push_front(std::move(p));
  if (cache_.size() > kCachedBlobs) cache_.pop_back();
}

absl::StatusOr<std::shared_ptr<const OutputProjections>> ProjectionBlobs::Resolve(
    const ProjectionsHeader& header) {
  {
    absl::MutexLock lock(&mu_);
    for (const auto& p : cache_) {
      if (p->sha256() == header.sha256) return p;
    }
  }
  // Outside the lock: a store read may be a file of hundreds of MiB or an etcd round trip.
  auto p = store_->GetProjections(header);
  if (!p.ok()) return p.status();
  absl::MutexLock lock(&mu_);
  Remember(*p);
  return p;
}

absl::StatusOr<v1::UploadProjectionsResponse> ProjectionBlobs::Upload(
    const v1::UploadProjectionsRequest& request) {
  auto header = CheckedHeader(request);
  if (!header.ok()) return header.status();
  const uint64_t total = header->blob_bytes();
  v1::UploadProjectionsResponse response;
  if (request.offset() == 0) {
    // Held already (an earlier upload, or a published strategy's): nothing to send.
    auto held = Resolve(*header);
    if (held.ok()) {
      response.set_received(total);
      response.set_complete(true);
      return response;
    }
    if (!absl::IsNotFound(held.status())) return held.status();
  }
  if (request.data().size() > kProjectionChunkBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "data: a piece of %d bytes; at most %d", request.data().size(), kProjectionChunkBytes));
  }
  if (request.offset() + request.data().size() > total) {
    return absl::InvalidArgumentError(
        absl::StrFormat("data: offset %d + %d bytes is past the blob's %d bytes", request.offset(),
                        request.data().size(), total));
  }
  std::string blob;
  {
    absl::MutexLock lock(&mu_);
    auto it = std::find_if(pending_.begin(), pending_.end(),
                           [&](const auto& e) { return e.first == header->sha256; });
    if (request.offset() == 0) {
      if (it != pending_.end()) pending_.erase(it);
      if (pending_.size() >= kMaxPendingUploads) {
        spdlog::warn("event=projections_upload_dropped sha256={} reason=\"too many uploads\"",
                     pending_.front().first.substr(0, 16));
        pending_.pop_front();
      }
      pending_.push_back({header->sha256, Pending{*header, ""}});
      it = std::prev(pending_.end());
    } else if (it == pending_.end() || it->second.data.size() != request.offset()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "offset: %d, but the registry holds %d bytes of projections %s (start over at 0)",
          request.offset(), it == pending_.end() ? 0 : it->second.data.size(),
          header->sha256.substr(0, 16)));
    }
    it->second.data += request.data();
    response.set_received(it->second.data.size());
    if (it->second.data.size() < total) return response;
    blob = std::move(it->second.data);
    pending_.erase(it);
  }
  auto p = ProjectionsFromBlob(*header, std::move(blob));
  if (!p.ok()) return p.status();  // DataLoss: the bytes do not hash to ref.sha256
  absl::Status s = store_->PutProjections(*p);
  if (!s.ok()) return s;
  spdlog::info("event=projections_stored sha256={} bytes={} layers={}",
               header->sha256.substr(0, 16), total, header->layers.size());
  absl::MutexLock lock(&mu_);
  Remember(*p);
  response.set_complete(true);
  return response;
}

absl::StatusOr<v1::GetProjectionsResponse> ProjectionBlobs::Get(
    const v1::GetProjectionsRequest& request) {
  if (!request.has_ref()) return absl::InvalidArgumentError("ref is missing");
  auto header = FromProto(request.ref(), "ref");
  if (!header.ok()) return header.status();
  absl::Status s = CheckProjectionsHeader(*header, "ref");
  if (!s.ok()) return s;
  auto p = Resolve(*header);
  if (!p.ok()) return p.status();
  const std::string& blob = (*p)->blob();
  if (request.offset() > blob.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("offset: %d is past the blob's %d bytes", request.offset(), blob.size()));
  }
  uint64_t n = request.max_bytes();
  if (n == 0 || n > kProjectionChunkBytes) n = kProjectionChunkBytes;
  v1::GetProjectionsResponse response;
  response.set_blob_bytes(blob.size());
  response.set_data(blob.substr(request.offset(), n));
  return response;
}

}  // namespace kvshare
