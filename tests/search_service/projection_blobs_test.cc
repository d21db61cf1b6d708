// The registry's side of moving output projections blobs (search_service/server/
// projection_blobs.h, issue 18), over the in-memory store: an upload in pieces stores the blob
// once its hash checks and reads back piece by piece byte for byte; pieces out of order, too
// large or past the end are refused naming the field and the limit; bytes that do not hash to
// the header are DataLoss and store nothing; a held blob answers complete at once.
#include "search_service/server/projection_blobs.h"

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/wire/strategy_wire.h"
#include "search_service/server/in_memory_strategy_store.h"

namespace kvshare {
namespace {

using ::testing::HasSubstr;

// Two layers of 600 x 600 f16: 1,440,000 bytes, two pieces of at most 1 MiB.
std::shared_ptr<const OutputProjections> Blob(uint32_t seed) {
  std::vector<std::vector<float>> m(2, std::vector<float>(600 * 600));
  for (size_t l = 0; l < 2; ++l) {
    for (size_t i = 0; i < m[l].size(); ++i) m[l][i] = float((i * 7919u + seed + l) % 1001) / 1000;
  }
  auto p = OutputProjections::FromF32(DType::kF16, 600, 600, {2, 5}, m);
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

v1::UploadProjectionsRequest Piece(const OutputProjections& p, uint64_t offset, uint64_t n) {
  v1::UploadProjectionsRequest r;
  ToProto(HeaderOf(p), r.mutable_ref());
  r.set_offset(offset);
  r.set_data(p.blob().substr(offset, n));
  return r;
}

TEST(ProjectionBlobsTest, AnUploadInPiecesStoresTheBlobAndReadsBackByteForByte) {
  InMemoryStrategyStore store;
  ProjectionBlobs blobs(&store);
  const auto p = Blob(1);
  const uint64_t total = p->blob().size();
  ASSERT_EQ(total, 1440000u);
  auto first = blobs.Upload(Piece(*p, 0, kProjectionChunkBytes));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->complete());
  EXPECT_EQ(first->received(), kProjectionChunkBytes);
  EXPECT_EQ(store.GetProjections(HeaderOf(*p)).status().code(), absl::StatusCode::kNotFound);
  auto last = blobs.Upload(Piece(*p, kProjectionChunkBytes, total));
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_TRUE(last->complete());
  ASSERT_TRUE(store.GetProjections(HeaderOf(*p)).ok());

  std::string read;
  v1::GetProjectionsRequest get;
  ToProto(HeaderOf(*p), get.mutable_ref());
  get.set_max_bytes(500000);
  while (read.size() < total) {
    get.set_offset(read.size());
    auto piece = blobs.Get(get);
    ASSERT_TRUE(piece.ok()) << piece.status();
    EXPECT_EQ(piece->blob_bytes(), total);
    ASSERT_LE(piece->data().size(), 500000u);
    read += piece->data();
  }
  EXPECT_EQ(read, p->blob());
  // Held: a new upload of it is complete at its first piece.
  auto again = blobs.Upload(Piece(*p, 0, 10));
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->complete());
  EXPECT_EQ(again->received(), total);
}

TEST(ProjectionBlobsTest, PiecesOutOfOrderTooLargeOrPastTheEndAreRefusedNamingTheLimit) {
  InMemoryStrategyStore store;
  ProjectionBlobs blobs(&store);
  const auto p = Blob(2);
  auto skipped = blobs.Upload(Piece(*p, 4096, 10));
  EXPECT_EQ(skipped.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(skipped.status().message()), HasSubstr("offset: 4096"));
  ASSERT_TRUE(blobs.Upload(Piece(*p, 0, 100)).ok());
  auto gap = blobs.Upload(Piece(*p, 200, 100));
  EXPECT_THAT(std::string(gap.status().message()), HasSubstr("holds 100 bytes"));
  v1::UploadProjectionsRequest big = Piece(*p, 100, kProjectionChunkBytes + 1);
  auto too_big = blobs.Upload(big);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(too_big.status().message()), HasSubstr("at most 1048576"));
  v1::UploadProjectionsRequest past = Piece(*p, 100, 100);
  past.set_offset(p->blob().size() - 50);
  EXPECT_THAT(std::string(blobs.Upload(past).status().message()), HasSubstr("past the blob's"));
  v1::UploadProjectionsRequest no_ref;
  EXPECT_THAT(std::string(blobs.Upload(no_ref).status().message()), HasSubstr("ref is missing"));
}

TEST(ProjectionBlobsTest, BytesThatDoNotHashToTheHeaderAreDataLossAndStoreNothing) {
  InMemoryStrategyStore store;
  ProjectionBlobs blobs(&store);
  const auto p = Blob(3), q = Blob(4);
  // q's bytes under p's header.
  const ProjectionsHeader header = HeaderOf(*p);
  std::string sent;
  absl::StatusOr<v1::UploadProjectionsResponse> r;
  for (uint64_t off = 0; off < q->blob().size(); off += kProjectionChunkBytes) {
    v1::UploadProjectionsRequest req = Piece(*q, off, kProjectionChunkBytes);
    ToProto(header, req.mutable_ref());
    r = blobs.Upload(req);
  }
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store.GetProjections(header).status().code(), absl::StatusCode::kNotFound);
  v1::GetProjectionsRequest get;
  ToProto(header, get.mutable_ref());
  auto missing = blobs.Get(get);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr(header.sha256));
}

}  // namespace
}  // namespace kvshare
